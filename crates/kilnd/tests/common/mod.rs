//! A real kilnd process in a temporary state directory, with clients and test guests.
//!
//! Binaries: kilnd is this package's (`CARGO_BIN_EXE_kilnd`); `kiln-vmm` and `kiln` are found
//! next to the test binary's directory (`<target>/<profile>/`), where `cargo test --workspace`
//! puts them, also under `CARGO_TARGET_DIR`. Run `cargo build -p kiln-vmm -p kiln-cli` first
//! when testing this package alone.

#![allow(dead_code, clippy::unwrap_used)] // shared by several test binaries; set-up failures fail the test

use kiln_api::{Client, ClientError, CreateVm, Vm, VmState};
use kiln_testguest::elf::ElfImage;
use kiln_testguest::{guests, GUEST_BASE};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `<target>/<profile>/`, the directory of the workspace's binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/<profile>/deps/<test binary>
    exe.parent().and_then(Path::parent).unwrap().to_owned()
}

/// A workspace binary built by cargo, or a panic that says how to build it.
pub fn workspace_bin(name: &str, package: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p {package}` (cargo test --workspace does)",
        path.display()
    );
    path
}

/// The kilnd binary: cargo names it to tests and benches; examples find it like the others.
pub fn kilnd_bin() -> PathBuf {
    option_env!("CARGO_BIN_EXE_kilnd")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_bin("kilnd", "kilnd"))
}

/// A stand-in for kiln-vmm that prints like it and runs until signalled.
pub fn fake_vmm(dir: &Path) -> PathBuf {
    let path = dir.with_extension("fake-vmm.sh");
    std::fs::write(
        &path,
        "#!/bin/sh\necho 'kiln-vmm: engine fake' >&2\necho idle\nexec sleep 600\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The test guests, as kernel files in `dir`.
pub struct Kernels {
    pub idle: String,
    pub crash: String,
    pub hello: String,
    /// Echoes console input until it has echoed a `q`, then resets.
    pub echo: String,
}

impl Kernels {
    pub fn write(dir: &Path) -> Kernels {
        let write = |name: &str, code: Vec<u8>| {
            let path = dir.join(name);
            ElfImage::new(GUEST_BASE, code).write(&path).unwrap();
            path.to_str().unwrap().to_owned()
        };
        Kernels {
            idle: write("idle.elf", guests::idle_forever().unwrap()),
            crash: write("crash.elf", guests::triple_fault().unwrap()),
            hello: write("hello.elf", guests::hello("hello from the guest\n").unwrap()),
            echo: write("echo.elf", guests::serial_echo().unwrap()),
        }
    }
}

/// A kilnd process and its state directory (removed on drop, after killing what it ran).
pub struct Daemon {
    child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub vmm: PathBuf,
    /// More kilnd arguments (host size, policy).
    pub args: Vec<String>,
    /// The network namespace kilnd runs in (`ip netns exec`), if not the test's own.
    pub netns: Option<String>,
}

impl Daemon {
    /// Starts kilnd with the real kiln-vmm in a fresh directory named after `test`.
    pub fn start(test: &str) -> Daemon {
        Daemon::start_with_vmm(test, workspace_bin("kiln-vmm", "kiln-vmm"))
    }

    /// Starts kilnd with `vmm` as its monitor binary.
    pub fn start_with_vmm(test: &str, vmm: PathBuf) -> Daemon {
        Daemon::start_with(test, vmm, &[])
    }

    /// Starts kilnd with `vmm` and more arguments.
    pub fn start_with(test: &str, vmm: PathBuf, args: &[&str]) -> Daemon {
        Daemon::start_in(test, vmm, args, None)
    }

    /// Starts kilnd with `vmm` and more arguments, in network namespace `netns` if given.
    pub fn start_in(test: &str, vmm: PathBuf, args: &[&str], netns: Option<&str>) -> Daemon {
        let dir = std::env::temp_dir().join(format!("kilnd-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let args = args.iter().map(|a| (*a).to_owned()).collect();
        let netns = netns.map(str::to_owned);
        let mut d = Daemon { child: None, socket: dir.join("kilnd.sock"), dir, vmm, args, netns };
        d.spawn();
        d
    }

    /// Starts a kilnd process on this state directory and waits until it answers.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "kilnd is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("kilnd.log"))
            .unwrap();
        // `ip netns exec` execs kilnd, so the child's pid is kilnd's.
        let mut command = match &self.netns {
            Some(netns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns]).arg(kilnd_bin());
                c
            }
            None => Command::new(kilnd_bin()),
        };
        let child = command
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--vmm")
            .arg(&self.vmm)
            .args(["--stop-timeout", "5"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.admin().raw("GET", "/v1/whoami", None).is_err() {
            assert!(Instant::now() < deadline, "kilnd did not answer; log: {}", self.log());
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(exited.is_none(), "kilnd exited ({exited:?}); log: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs kilnd (its VMMs are not its process group, they live on).
    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERMs kilnd and waits for it to exit; returns its exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) with integers only, on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().ok()?.code()
    }

    /// kilnd's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("kilnd.log")).unwrap_or_default()
    }

    /// A client authenticated by the test's uid (root or kilnd's owner: admin).
    pub fn admin(&self) -> Client {
        Client::new(&self.socket, None)
    }

    /// A client with a token.
    pub fn with_token(&self, token: &str) -> Client {
        Client::new(&self.socket, Some(token.to_owned()))
    }

    /// Runs the `kiln` CLI against this daemon.
    pub fn kiln(&self, args: &[&str]) -> std::process::Output {
        self.kiln_with_input(args, b"")
    }

    /// Runs the `kiln` CLI against this daemon with `input` piped to its stdin.
    pub fn kiln_with_input(&self, args: &[&str], input: &[u8]) -> std::process::Output {
        // The socket first: after `--` (kiln exec) it would be the command's.
        let mut child = Command::new(workspace_bin("kiln", "kiln-cli"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("KILN_TOKEN")
            .env_remove("KILN_URL")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // A command that exits without reading its input closes the pipe: not a failure here.
        let _ = std::io::Write::write_all(&mut stdin, input);
        drop(stdin);
        child.wait_with_output().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Kill every VMM the database knows of, so a failed test leaves no guest behind.
        if let Ok(vms) = self.admin().get::<Vec<Vm>>("/v1/vms") {
            for vm in vms {
                if let Some(pid) = vm.pid {
                    // SAFETY: kill(2) with integers only; the pid comes from kilnd's records.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                }
            }
        }
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) with integers only, on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
        // kilnd leaves its networks' dnsmasq running when it ends (as it leaves VMMs).
        let dir = self.dir.as_os_str().as_encoded_bytes().to_vec();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if cmdline.starts_with(b"dnsmasq") && cmdline.windows(dir.len()).any(|w| w == dir) {
                // SAFETY: kill(2) with integers only, on a dnsmasq of this test's kilnd.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // A stand-in VMM script the test wrote next to the directory.
        if self.vmm.starts_with(std::env::temp_dir()) && self.vmm.extension() == Some("sh".as_ref())
        {
            let _ = std::fs::remove_file(&self.vmm);
        }
    }
}

/// A definition with the defaults the tests use (kvm engine, 16 MiB).
pub fn spec(name: &str, kernel: &str) -> CreateVm {
    CreateVm {
        name: name.to_owned(),
        vcpus: 1,
        memory_mib: 16,
        engine: kiln_api::Engine::Kvm,
        kernel: kernel.to_owned(),
        initrd: None,
        cmdline: None,
        project: "default".to_owned(),
        restart_policy: kiln_api::RestartPolicy::Never,
        restart_limit: 3,
        priority: 0,
        expected_runtime_secs: None,
        vsock: false,
        disks: Vec::new(),
        nics: Vec::new(),
        image: None,
        disk_size_bytes: None,
        hostname: None,
        user_data: None,
        ssh_authorized_keys: Vec::new(),
    }
}

/// Creates a VM, panicking on failure.
pub fn create(client: &Client, spec: &CreateVm) -> Vm {
    client.call("POST", "/v1/vms", Some(spec)).unwrap()
}

/// `POST /v1/vms/{name}/{verb}`.
pub fn verb(client: &Client, name: &str, verb: &str) -> Result<Vm, ClientError> {
    client.post(&format!("/v1/vms/{name}/{verb}"))
}

/// Polls until `name` is in `state`; returns it.
pub fn wait_state(client: &Client, name: &str, state: VmState, timeout: Duration) -> Vm {
    let deadline = Instant::now() + timeout;
    loop {
        let vm: Vm = client.get(&format!("/v1/vms/{name}")).unwrap();
        if vm.state == state {
            return vm;
        }
        assert!(Instant::now() < deadline, "{name} stayed {} (wanted {state}): {vm:?}", vm.state);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls until the console log of `name` contains `text`.
pub fn wait_console(client: &Client, name: &str, text: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let log = client.get_text(&format!("/v1/vms/{name}/logs")).unwrap();
        if log.contains(text) {
            return log;
        }
        assert!(Instant::now() < deadline, "console of {name} lacks {text:?}: {log:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The HTTP status of a failed call.
pub fn status(result: Result<impl std::fmt::Debug, ClientError>) -> (u16, kiln_api::ApiError) {
    match result {
        Err(ClientError::Api { status, body }) => (status, body),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// The sha256 of a file, from `sha256sum`.
pub fn sha256_of(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_owned()
}

/// `/proc/<pid>/stat` state letter.
pub fn proc_state(pid: u32) -> Option<char> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    text[text.rfind(')')? + 1..].split_whitespace().next()?.chars().next()
}

/// The Kiln kernel and kiln-image, or why a real-guest test cannot run.
pub fn guest_kernel_and_image() -> Result<(PathBuf, PathBuf), String> {
    let kernel = std::env::var_os("KILN_GUEST_KERNEL")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .ok_or("KILN_GUEST_KERNEL is not set to a kernel; scripts/test builds it")?;
    let image = bin_dir().join("kiln-image");
    if !image.is_file() {
        return Err(format!("kiln-image is not built in {}", bin_dir().display()));
    }
    Ok((kernel, image))
}

/// The Kiln kernel, the static agent and kiln-image, or why a real-guest test cannot run.
pub fn real_guest_inputs() -> Result<(PathBuf, PathBuf, PathBuf), String> {
    let (kernel, image) = guest_kernel_and_image()?;
    let agent = kiln_testguest::agent::static_agent(&bin_dir())?;
    Ok((kernel, agent, image))
}

/// The engine real-guest tests use: `KILN_TEST_ENGINE` (emu unless the kvm rerun set it).
pub fn test_engine() -> kiln_api::Engine {
    match kiln_testguest::nested::test_engine().as_str() {
        "kvm" => kiln_api::Engine::Kvm,
        _ => kiln_api::Engine::Emu,
    }
}

/// A definition of VM "guest": the Kiln kernel with an initramfs whose init is `script` and
/// that holds the static agent as `/bin/kiln-agent`, 256 MiB, a vsock device, on the test
/// engine.
pub fn agent_guest(d: &Daemon, inputs: &(PathBuf, PathBuf, PathBuf), script: &str) -> CreateVm {
    let (kernel, agent, image) = inputs;
    let initrd = kiln_testguest::initramfs::build(
        image,
        &d.dir,
        "initramfs",
        script,
        &[(agent, "/bin/kiln-agent")],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut s = spec("guest", kernel.to_str().unwrap());
    s.engine = test_engine();
    s.memory_mib = 256;
    s.initrd = Some(initrd.to_str().unwrap().to_owned());
    s.vsock = true;
    s
}

/// DHCP with busybox's udhcpc (its script sets the address, route and resolver), then the agent.
pub const DHCP_GUEST_INIT: &str = "#!/bin/sh
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
cat > /bin/dhcp-event <<'EOS'
#!/bin/sh
case \"$1\" in bound|renew)
  ip addr flush dev \"$interface\"
  ip addr add \"$ip/$mask\" dev \"$interface\"
  [ -n \"$router\" ] && ip route add default via \"$router\"
  : > /etc/resolv.conf
  for d in $dns; do echo \"nameserver $d\" >> /etc/resolv.conf; done
  echo \"KILN-DHCP $ip\";;
esac
EOS
chmod +x /bin/dhcp-event
ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -s /bin/dhcp-event -q -n -t 20 -T 1 || echo KILN-DHCP-FAILED
/bin/kiln-agent serve &
while true; do sleep 1; done
";
