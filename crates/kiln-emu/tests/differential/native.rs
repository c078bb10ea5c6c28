//! The native oracle: a forked child under ptrace that executes generated code on the host CPU
//! at CPL3. Code, data and stack live in one shared mapping at a fixed address, so the parent
//! writes code and data directly and the child executes them.

use std::io;

/// Base of the shared region: code page, two data pages, stack page.
pub const BASE: u64 = 0x30_0000;
/// The code page.
pub const CODE: u64 = BASE;
/// The data pages.
pub const DATA: u64 = BASE + 0x1000;
/// Size of the data area.
pub const DATA_LEN: usize = 0x2000;
/// The stack page.
pub const STACK: u64 = BASE + 0x3000;
/// The initial stack pointer.
pub const STACK_TOP: u64 = STACK + 0x800;
/// Bytes of the region.
pub const LEN: usize = 0x4000;

/// How a single step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The step completed (SIGTRAP).
    Trap,
    /// The instruction raised this signal (SIGSEGV, SIGFPE, SIGILL, SIGBUS).
    Signal(i32),
}

/// The traced child.
pub struct Native {
    pid: libc::pid_t,
    region: *mut u8,
    /// The child's registers when it stopped itself (segments, bases).
    pub base_regs: libc::user_regs_struct,
}

fn os_err(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl Native {
    /// Maps the region, forks, and stops the child under ptrace.
    pub fn spawn() -> io::Result<Self> {
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping; the result is checked.
        let p = unsafe {
            libc::mmap(
                BASE as *mut libc::c_void,
                LEN,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED || p as u64 != BASE {
            return Err(os_err("mapping the oracle region at 0x300000"));
        }
        // Data and stack are not executable (before fork, so the child inherits it).
        // SAFETY: changes the protection of pages of the mapping made just above.
        let rc = unsafe {
            libc::mprotect(
                DATA as *mut libc::c_void,
                LEN - 0x1000,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if rc != 0 {
            return Err(os_err("mprotect of the oracle data pages"));
        }
        // SAFETY: the child only makes async-signal-safe calls (ptrace, raise, _exit) and is then
        // driven entirely by the parent through ptrace.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(os_err("fork"));
        }
        if pid == 0 {
            // SAFETY: async-signal-safe calls in the forked child; it never returns.
            unsafe {
                // Without tracing (ptrace denied here) the parent sees an exit, not a stop.
                if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) != 0 {
                    libc::_exit(127);
                }
                libc::raise(libc::SIGSTOP);
                libc::_exit(0);
            }
        }
        let mut n = Native {
            pid,
            region: p.cast::<u8>(),
            // SAFETY: user_regs_struct is plain old data; all-zero is a valid value.
            base_regs: unsafe { std::mem::zeroed() },
        };
        n.wait()?;
        n.base_regs = n.get_regs()?;
        Ok(n)
    }

    fn wait(&self) -> io::Result<Stop> {
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out pointer.
        let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
        if r != self.pid {
            return Err(os_err("waitpid"));
        }
        if !libc::WIFSTOPPED(status) {
            return Err(io::Error::other(format!(
                "oracle child did not stop (status {status:#x})"
            )));
        }
        Ok(match libc::WSTOPSIG(status) {
            libc::SIGTRAP | libc::SIGSTOP => Stop::Trap,
            s => Stop::Signal(s),
        })
    }

    /// Writes bytes into the shared region at absolute address `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) {
        let off = (addr - BASE) as usize;
        assert!(off + data.len() <= LEN, "oracle write inside the region");
        // SAFETY: the region is LEN bytes mapped at `region`; the range was checked above and
        // the child is stopped, so nothing else accesses it concurrently.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.region.add(off), data.len()) };
    }

    /// Reads bytes from the shared region.
    pub fn read(&self, addr: u64, buf: &mut [u8]) {
        let off = (addr - BASE) as usize;
        assert!(off + buf.len() <= LEN, "oracle read inside the region");
        // SAFETY: as for `write`.
        unsafe { std::ptr::copy_nonoverlapping(self.region.add(off), buf.as_mut_ptr(), buf.len()) };
    }

    /// The child's registers.
    pub fn get_regs(&self) -> io::Result<libc::user_regs_struct> {
        // SAFETY: user_regs_struct is plain old data.
        let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        // SAFETY: PTRACE_GETREGS writes one user_regs_struct to the given pointer.
        let rc = unsafe {
            libc::ptrace(libc::PTRACE_GETREGS, self.pid, 0, &mut r as *mut libc::user_regs_struct)
        };
        if rc < 0 {
            return Err(os_err("PTRACE_GETREGS"));
        }
        Ok(r)
    }

    /// Sets the child's registers.
    pub fn set_regs(&self, r: &libc::user_regs_struct) -> io::Result<()> {
        // SAFETY: PTRACE_SETREGS reads one user_regs_struct from the given pointer.
        let rc = unsafe {
            libc::ptrace(libc::PTRACE_SETREGS, self.pid, 0, r as *const libc::user_regs_struct)
        };
        if rc < 0 {
            return Err(os_err("PTRACE_SETREGS"));
        }
        Ok(())
    }

    /// The child's x87/SSE registers.
    pub fn get_fpregs(&self) -> io::Result<libc::user_fpregs_struct> {
        // SAFETY: user_fpregs_struct is plain old data.
        let mut r: libc::user_fpregs_struct = unsafe { std::mem::zeroed() };
        // SAFETY: PTRACE_GETFPREGS writes one user_fpregs_struct to the given pointer.
        let rc = unsafe {
            libc::ptrace(
                libc::PTRACE_GETFPREGS,
                self.pid,
                0,
                &mut r as *mut libc::user_fpregs_struct,
            )
        };
        if rc < 0 {
            return Err(os_err("PTRACE_GETFPREGS"));
        }
        Ok(r)
    }

    /// Sets the child's x87/SSE registers.
    pub fn set_fpregs(&self, r: &libc::user_fpregs_struct) -> io::Result<()> {
        // SAFETY: PTRACE_SETFPREGS reads one user_fpregs_struct from the given pointer.
        let rc = unsafe {
            libc::ptrace(libc::PTRACE_SETFPREGS, self.pid, 0, r as *const libc::user_fpregs_struct)
        };
        if rc < 0 {
            return Err(os_err("PTRACE_SETFPREGS"));
        }
        Ok(())
    }

    /// Executes one instruction (or one iteration of a REP string instruction).
    pub fn step(&self) -> io::Result<Stop> {
        // SAFETY: resumes our stopped child for one instruction, suppressing any pending signal.
        let rc = unsafe { libc::ptrace(libc::PTRACE_SINGLESTEP, self.pid, 0, 0) };
        if rc < 0 {
            return Err(os_err("PTRACE_SINGLESTEP"));
        }
        self.wait()
    }
}

impl Drop for Native {
    fn drop(&mut self) {
        // SAFETY: kills and reaps our own child, then unmaps the region we mapped.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            let mut status = 0;
            libc::waitpid(self.pid, &mut status, 0);
            libc::munmap(self.region.cast(), LEN);
        }
    }
}
