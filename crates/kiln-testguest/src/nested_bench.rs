//! Benchmarks in the nested test host: with `KILN_BENCH_NESTED=1`, a benchmark binary runs
//! itself again inside [`crate::nested::NestedHost`] (kvm there is hardware-assisted, on an
//! emulated CPU), and its tables say so: the figures are those of kvm nested in QEMU TCG, not
//! of bare-metal KVM, and compare only with peers measured in the same nested host.

use crate::nested::NestedHost;
use std::path::{Path, PathBuf};

/// Set inside the nested host for the benchmark's second run.
const INSIDE: &str = "KILN_BENCH_IN_NESTED";

/// The label a benchmark prints above its table when it runs in the nested host.
pub const NESTED_LABEL: &str =
    "NESTED: kvm inside QEMU TCG with emulated AMD SVM (the nested test \
     host); not bare-metal figures, compare only with peers measured in the same host";

/// The label for this run: [`NESTED_LABEL`] inside the nested host, else none.
pub fn label() -> Option<&'static str> {
    std::env::var_os(INSIDE).is_some().then_some(NESTED_LABEL)
}

/// With `KILN_BENCH_NESTED=1` (and not already inside), runs this benchmark binary again in the
/// nested host with `programs` (and their libraries) and `files` copied in, prints what it
/// printed there, and returns true; returns false when the benchmark should run here.
/// `kiln_image` builds the nested host's initramfs; `setup` adds what the benchmark needs of the
/// host beyond that (`Ok` for nothing, [`NestedHost::for_kilnd_networks`]). The environment
/// variables `forward` (the benchmark's settings) and the guest kernels and static agent are
/// passed on, and `KILN_TEST_ENGINE=kvm` is set there.
pub fn rerun_in_nested_host(
    bench: &str,
    kiln_image: &Path,
    programs: &[&Path],
    files: &[&Path],
    forward: &[&str],
    setup: fn(NestedHost) -> Result<NestedHost, String>,
) -> bool {
    if std::env::var_os("KILN_BENCH_NESTED").is_none() || std::env::var_os(INSIDE).is_some() {
        return false;
    }
    let host = match NestedHost::from_env().and_then(setup) {
        Ok(host) => host,
        Err(why) => {
            println!("SKIPPED: {bench} in the nested host: {why}");
            return true;
        }
    };
    match run(host, bench, kiln_image, programs, files, forward) {
        Ok(output) => print!("{output}"),
        Err(why) => println!("{bench} in the nested host failed: {why}"),
    }
    true
}

/// `kiln-image` next to `kiln_vmm`, else in the debug build beside it (`cargo bench` builds
/// only the benchmarked package in release).
pub fn kiln_image_near(kiln_vmm: &Path) -> PathBuf {
    let here = kiln_vmm.with_file_name("kiln-image");
    let debug = kiln_vmm.parent().and_then(Path::parent).map(|t| t.join("debug/kiln-image"));
    match debug {
        Some(debug) if !here.is_file() && debug.is_file() => debug,
        _ => here,
    }
}

const BEGIN: &str = "KILN-BENCH-BEGIN";
const END: &str = "KILN-BENCH-END";

fn run(
    mut host: NestedHost,
    bench: &str,
    kiln_image: &Path,
    programs: &[&Path],
    files: &[&Path],
    forward: &[&str],
) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| format!("the benchmark's path: {e}"))?;
    for program in [exe.as_path(), kiln_image].iter().chain(programs) {
        host = host.program(program)?;
    }
    for file in files {
        host = host.file(file);
    }
    let mut env = format!("{INSIDE}=1 KILN_TEST_ENGINE=kvm ");
    let shared = ["KILN_GUEST_KERNEL", "KILN_GUEST_BZIMAGE", "KILN_DEBIAN_KERNEL"];
    for var in shared.iter().chain(forward) {
        if let Some(value) = std::env::var_os(var) {
            let path = PathBuf::from(&value);
            if path.is_file() {
                host = host.file(&path);
            }
            env.push_str(&format!("{var}='{}' ", path.display()));
        }
    }
    let bin_dir = exe.parent().and_then(Path::parent).unwrap_or(Path::new("/"));
    if let Ok(agent) = crate::agent::static_agent(bin_dir) {
        host = host.file(&agent);
        env.push_str(&format!("KILN_AGENT_STATIC='{}' ", agent.display()));
    }
    let script = format!(
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
         mkdir -p /run /var && ln -sf /run /var/run\n\
         echo {BEGIN}\n{env}{} --bench 2>&1\necho {END}\n",
        exe.display()
    );
    let dir = std::env::temp_dir().join(format!("kiln-nested-{bench}-{}", std::process::id()));
    let out = host.run(kiln_image, &dir, &format!("exec 2>&1\n{script}"))?;
    let _ = std::fs::remove_dir_all(&dir);
    let console = &out.console;
    let begin = console.find(&format!("{BEGIN}\n")).map(|at| at + BEGIN.len() + 1);
    let end = console.rfind(END);
    match (begin, end) {
        (Some(b), Some(e)) if b <= e => Ok(console[b..e].to_string()),
        _ => Err(format!("no output between the markers; the nested host's console:\n{console}")),
    }
}
