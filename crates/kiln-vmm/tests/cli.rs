//! `kiln-vmm` as users run it: foreign kernel images, exit statuses, and bad input.

#![allow(clippy::unwrap_used)] // test helpers: a failed set-up step should fail the test

use kiln_testguest::elf::{ElfImage, ElfNote};
use kiln_testguest::{guests, skip, GUEST_BASE};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("kiln-vmm-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn kiln_vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln-vmm"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("kiln-vmm runs")
}

fn write_guest(dir: &TempDir, name: &str, code: Vec<u8>) -> PathBuf {
    let path = dir.path(name);
    ElfImage::new(GUEST_BASE, code).write(&path).unwrap();
    path
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn foreign_elf_kernel_prints_to_serial_and_resets_with_status_0() {
    if !skip::require_kvm("kiln-vmm::foreign_elf_kernel") {
        return;
    }
    let dir = TempDir::new("hello");
    let kernel =
        write_guest(&dir, "hello.elf", guests::hello("Hello from a foreign kernel\n").unwrap());
    let out = kiln_vmm(&["--kernel", p(&kernel), "--engine", "kvm", "--memory", "64"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Hello from a foreign kernel\n");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("boot timer: guest ready"), "stderr: {}", stderr(&out));
}

#[test]
fn two_vcpus_boot_with_application_processor_waiting_for_sipi() {
    if !skip::require_kvm("kiln-vmm::two_vcpus") {
        return;
    }
    let dir = TempDir::new("smp");
    let kernel = write_guest(&dir, "hello.elf", guests::hello("two\n").unwrap());
    let out = kiln_vmm(&["--kernel", p(&kernel), "--engine", "kvm", "--vcpus", "2"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "two\n");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
}

#[test]
fn triple_fault_exits_3_with_a_one_line_reason_and_registers() {
    if !skip::require_kvm("kiln-vmm::triple_fault") {
        return;
    }
    let dir = TempDir::new("tf");
    let kernel = write_guest(&dir, "tf.elf", guests::triple_fault().unwrap());
    let out = kiln_vmm(&["--kernel", p(&kernel), "--engine", "kvm"]);
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    let line = err.lines().find(|l| l.contains("guest crashed")).expect("a crash line");
    assert!(line.contains("triple-faulted") && line.contains("rip="), "{line}");
}

#[test]
fn linux_kernel_under_kvm_on_a_pvm_host_is_refused_with_advice() {
    if kiln_kvm::HostVirtualization::detect() != kiln_kvm::HostVirtualization::Pvm {
        skip::skip("kiln-vmm::pvm_refusal", "this host's /dev/kvm is not PVM");
        return;
    }
    let dir = TempDir::new("pvm");
    let mut image = ElfImage::new(GUEST_BASE, guests::hello("must not run\n").unwrap());
    image.notes.push(ElfNote::linux());
    let kernel = dir.path("vmlinux");
    image.write(&kernel).unwrap();
    let out = kiln_vmm(&["--kernel", p(&kernel), "--engine", "kvm"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert!(err.contains("PVM") && err.contains("--engine emu"), "{err}");
}

fn assert_bad_input(args: &[&str], expect: &[&str]) {
    let out = kiln_vmm(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "args {args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    for word in expect {
        assert!(err.contains(word), "{args:?}: expected {word:?} in {err}");
    }
}

#[test]
fn bad_input_gets_a_clear_one_line_error_and_status_1() {
    let dir = TempDir::new("bad");
    let good = write_guest(&dir, "good.elf", guests::hello("x").unwrap());
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path("truncated.elf");
    std::fs::write(&truncated, &bytes[..bytes.len() - 10]).unwrap();
    let short_header = dir.path("short.elf");
    std::fs::write(&short_header, &bytes[..40]).unwrap();
    let text = dir.path("notes.txt");
    std::fs::write(&text, "just some text, not a kernel\n").unwrap();
    let mut big = ElfImage::new(GUEST_BASE, vec![0xf4]);
    big.bss = 64 << 20;
    let big_kernel = dir.path("big.elf");
    big.write(&big_kernel).unwrap();
    let initrd = dir.path("initrd.img");
    std::fs::write(&initrd, vec![0u8; 20 << 20]).unwrap();

    assert_bad_input(
        &["--kernel", p(&dir.path("missing"))],
        &["cannot read kernel image", "missing"],
    );
    assert_bad_input(&["--kernel", p(&truncated)], &["truncated", "truncated.elf"]);
    assert_bad_input(&["--kernel", p(&short_header)], &["truncated", "ELF header"]);
    assert_bad_input(&["--kernel", p(&text)], &["neither an ELF vmlinux nor a bzImage"]);
    assert_bad_input(&["--kernel", p(&good), "--vcpus", "0"], &["--vcpus 0", "between 1 and 254"]);
    assert_bad_input(&["--kernel", p(&good), "--memory", "4"], &["--memory 4 MiB is too small"]);
    assert_bad_input(
        &["--kernel", p(&big_kernel), "--memory", "32"],
        &["needs guest memory", "raise --memory"],
    );
    assert_bad_input(&["--kernel", p(&good), "--memory", "100000000"], &["more than this host's"]);
    assert_bad_input(
        &["--kernel", p(&good), "--initrd", p(&initrd), "--memory", "16"],
        &["initrd", "does not fit", "more --memory"],
    );
    assert_bad_input(
        &["--kernel", p(&good), "--initrd", p(&dir.path("no-initrd"))],
        &["initrd", "does not exist"],
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = kiln_vmm(&["--vcpus", "two"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn sigterm_stops_a_running_guest_with_status_0() {
    if !skip::require_kvm("kiln-vmm::sigterm_stop") {
        return;
    }
    let dir = TempDir::new("sigterm");
    let kernel = write_guest(&dir, "halt.elf", guests::idle_forever().unwrap());
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln-vmm"))
        .args(["--kernel", p(&kernel), "--engine", "kvm"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut line = [0u8; 5];
    std::io::Read::read_exact(&mut stdout, &mut line).unwrap(); // "idle\n": the guest runs
                                                                // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("stopped by SIGTERM"), "{}", stderr(&out));
}

#[test]
fn stdin_reaches_the_guest_serial_console() {
    if !skip::require_kvm("kiln-vmm::console_input") {
        return;
    }
    let dir = TempDir::new("echo");
    let kernel = write_guest(&dir, "echo.elf", guests::serial_echo().unwrap());
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln-vmm"))
        .args(["--kernel", p(&kernel), "--engine", "kvm"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = b"typed into the console, longer than the 64-byte receive FIFO of the UART: q";
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out.stdout, input);
}

#[test]
fn console_socket_clients_type_into_the_guest_and_read_its_output_as_stdout_does() {
    if !skip::require_kvm("kiln-vmm::console_socket") {
        return;
    }
    let dir = TempDir::new("console-socket");
    let kernel = write_guest(&dir, "echo.elf", guests::serial_echo().unwrap());
    let socket = dir.path("console.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_kiln-vmm"))
        .args(["--kernel", p(&kernel), "--engine", "kvm", "--no-console-input"])
        .args(["--console-socket", p(&socket)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut client = loop {
        match std::os::unix::net::UnixStream::connect(&socket) {
            Ok(stream) => break stream,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "no console socket: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    };
    let input = b"typed through the console socket, more than the 64-byte FIFO of the UART: q";
    std::io::Write::write_all(&mut client, input).unwrap();
    let mut echoed = Vec::new();
    std::io::Read::read_to_end(&mut client, &mut echoed).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(echoed, input, "the client reads the guest's output");
    assert_eq!(out.stdout, input, "stdout still gets it");
    assert!(!socket.exists(), "the socket is removed when the VM ends");

    std::fs::write(&socket, b"a file").unwrap();
    let out =
        kiln_vmm(&["--kernel", p(&kernel), "--engine", "kvm", "--console-socket", p(&socket)]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("--console-socket") && err.contains("not a socket"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn virtio_devices_appear_in_the_mmio_hole_on_both_engines() {
    let dir = TempDir::new("virtio");
    let kernel = write_guest(&dir, "magic.elf", guests::print_mmio_word(0xd000_0000).unwrap());
    let disk = dir.path("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut engines = vec!["emu"];
    if skip::require_kvm("kiln-vmm::virtio_devices_kvm") {
        engines.push("kvm");
    }
    for engine in engines {
        let out = kiln_vmm(&["--kernel", p(&kernel), "--engine", engine, "--disk", p(&disk)]);
        assert_eq!(out.status.code(), Some(0), "{engine}: {}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "virt", "{engine}");
    }
    // Without a device the window reads as all ones.
    let out = kiln_vmm(&["--kernel", p(&kernel), "--engine", "emu"]);
    assert_eq!(out.stdout, [0xff; 4]);
}

#[test]
fn disk_errors_name_the_disk_and_what_to_do() {
    let dir = TempDir::new("diskerr");
    let good = write_guest(&dir, "good.elf", guests::hello("x").unwrap());
    let disk = dir.path("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    assert_bad_input(
        &["--kernel", p(&good), "--disk", p(&dir.path("none.img"))],
        &["--disk", "does not exist"],
    );
    let bad_option = format!("{},rw", p(&disk));
    assert_bad_input(&["--kernel", p(&good), "--disk", &bad_option], &["unknown option \"rw\""]);
    let low_fd = format!("{},key-fd=1", p(&disk));
    assert_bad_input(&["--kernel", p(&good), "--disk", &low_fd], &["key-fd", "3 or more"]);
    let closed_fd = format!("{},key-fd=97", p(&disk));
    assert_bad_input(
        &["--kernel", p(&good), "--engine", "emu", "--disk", &closed_fd],
        &["key-fd=97 is not an open file descriptor"],
    );
    let held = kiln_virtio::block::Block::open(&disk, false, "").unwrap();
    assert_bad_input(
        &["--kernel", p(&good), "--engine", "emu", "--disk", p(&disk)],
        &["in use by another VM"],
    );
    drop(held);
}

#[test]
fn timeout_stops_a_guest_that_never_ends_with_status_4() {
    let dir = TempDir::new("timeout");
    let kernel = write_guest(&dir, "idle.elf", guests::idle_forever().unwrap());
    let started = std::time::Instant::now();
    let out = kiln_vmm(&["--kernel", p(&kernel), "--engine", "emu", "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("longer than --timeout 1"));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "idle\n");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn net_card_on_a_tap_appears_as_a_virtio_net_device() {
    let dir = TempDir::new("net");
    // Read the device-ID register of the first virtio window: 1 is a network card.
    let kernel = write_guest(&dir, "id.elf", guests::print_mmio_word(0xd000_0008).unwrap());
    let out = kiln_vmm(&[
        "--kernel",
        p(&kernel),
        "--engine",
        "emu",
        "--net",
        "tap=kilnv%d,mac=02:00:00:00:00:07",
    ]);
    let err = stderr(&out);
    if err.contains("cannot open /dev/net/tun") || err.contains("cannot create or attach TAP") {
        skip::skip("kiln-vmm::net_card", &format!("TAP devices are not available here: {err}"));
        return;
    }
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(out.stdout, [1, 0, 0, 0]);
    assert!(err.contains("MAC 02:00:00:00:00:07"), "{err}");
}

#[test]
fn bad_net_options_are_named() {
    let dir = TempDir::new("netbad");
    let good = write_guest(&dir, "good.elf", guests::hello("x").unwrap());
    assert_bad_input(&["--kernel", p(&good), "--net", "mac=zz"], &["--net", "not a MAC address"]);
    assert_bad_input(&["--kernel", p(&good), "--net", "mac=01:00:00:00:00:01"], &["multicast"]);
    assert_bad_input(
        &["--kernel", p(&good), "--net", "bridge=br0"],
        &["unknown option \"bridge=br0\""],
    );
    assert_bad_input(
        &["--kernel", p(&good), "--engine", "emu", "--net", "tap=bad name"],
        &["1-15 bytes"],
    );
}

#[test]
fn acpi_power_off_exits_0_on_both_engines() {
    let dir = TempDir::new("poweroff");
    let kernel = write_guest(&dir, "off.elf", guests::acpi_power_off().unwrap());
    let mut engines = vec!["emu"];
    if skip::require_kvm("kiln-vmm::acpi_power_off_kvm") {
        engines.push("kvm");
    }
    for engine in engines {
        let out = kiln_vmm(&["--kernel", p(&kernel), "--engine", engine]);
        assert_eq!(out.status.code(), Some(0), "{engine}: {}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "powering off\n");
        assert!(stderr(&out).contains("guest powered off"), "{}", stderr(&out));
    }
}

#[test]
fn vsock_device_appears_and_listens_on_its_socket() {
    let dir = TempDir::new("vsock");
    // The device-ID register of the first virtio window: 19 is a socket device.
    let kernel = write_guest(&dir, "id.elf", guests::print_mmio_word(0xd000_0008).unwrap());
    let uds = dir.path("v.sock");
    let spec = format!("cid=3,uds={}", p(&uds));
    let out = kiln_vmm(&["--kernel", p(&kernel), "--engine", "emu", "--vsock", &spec]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out.stdout, [19, 0, 0, 0]);
    assert!(!uds.exists(), "the socket is removed when the VM ends");

    // While a VM runs, its socket accepts host processes.
    let idle = write_guest(&dir, "idle.elf", guests::idle_forever().unwrap());
    let mut vmm = Command::new(env!("CARGO_BIN_EXE_kiln-vmm"))
        .args(["--kernel", p(&idle), "--engine", "emu", "--timeout", "3", "--vsock", &spec])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while !uds.exists() && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let connected = std::os::unix::net::UnixStream::connect(&uds);
    let status = vmm.wait().unwrap();
    assert!(connected.is_ok(), "connect to {}: {connected:?}", uds.display());
    assert_eq!(status.code(), Some(4), "stopped by --timeout");
}

#[test]
fn bad_vsock_options_are_named() {
    let dir = TempDir::new("vsockbad");
    let good = write_guest(&dir, "good.elf", guests::hello("x").unwrap());
    let uds = format!("uds={}", p(&dir.path("v.sock")));
    let bad = |spec: String, expect: &[&str]| {
        assert_bad_input(&["--kernel", p(&good), "--vsock", &spec], expect);
    };
    bad(format!("cid=2,{uds}"), &["--vsock", "cid 2 is reserved", "3 or more"]);
    bad(format!("cid=x,{uds}"), &["--vsock", "not a number"]);
    bad(uds.clone(), &["--vsock", "cid=N"]);
    bad("cid=3".into(), &["--vsock", "uds=PATH"]);
    bad("cid=3,uds=/no/such/dir/v.sock".into(), &["--vsock", "/no/such/dir does not exist"]);
    bad(format!("cid=3,{uds},port=1"), &["--vsock", "unknown option \"port=1\""]);
}
