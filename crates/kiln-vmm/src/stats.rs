//! `--stats PATH`: what the VMM's devices served, written as JSON every second and once more
//! when the VM ends, whole or not at all (a temporary file renamed into place), for a
//! supervisor to read (kilnd's `/metrics`):
//! `{"disks":[{"serial":"...","reads":N,"writes":N,"flushes":N,"read_bytes":N,
//! "written_bytes":N,"errors":N}, ...]}`, the disks in guest order.

use kiln_devices::ExitSignal;
use kiln_virtio::block::DiskCounters;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How often the file is rewritten while the VM runs.
const PERIOD: Duration = Duration::from_secs(1);

/// The counters of the VM's devices and where they go.
#[derive(Clone)]
pub struct Stats {
    path: PathBuf,
    disks: Vec<(String, Arc<DiskCounters>)>,
}

impl Stats {
    /// Statistics for `path` over `disks` (serial, counters).
    pub fn new(path: &Path, disks: Vec<(String, Arc<DiskCounters>)>) -> Self {
        Stats { path: path.to_path_buf(), disks }
    }

    /// The statistics as JSON.
    fn json(&self) -> String {
        let disks: Vec<serde_json::Value> = self
            .disks
            .iter()
            .map(|(serial, c)| {
                let n = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
                serde_json::json!({
                    "serial": serial,
                    "reads": n(&c.reads),
                    "writes": n(&c.writes),
                    "flushes": n(&c.flushes),
                    "read_bytes": n(&c.read_bytes),
                    "written_bytes": n(&c.written_bytes),
                    "errors": n(&c.errors),
                })
            })
            .collect();
        format!("{}\n", serde_json::json!({ "disks": disks }))
    }

    /// Writes the file now.
    pub fn write(&self) -> std::io::Result<()> {
        let temp = self.path.with_extension("tmp");
        std::fs::write(&temp, self.json())?;
        std::fs::rename(&temp, &self.path)
    }

    /// Starts the thread `kiln-stats`, which rewrites the file every [`PERIOD`] until `exit`
    /// is raised. A failed write is reported once and retried.
    pub fn spawn(&self, exit: Arc<ExitSignal>) -> std::io::Result<()> {
        let stats = self.clone();
        std::thread::Builder::new().name("kiln-stats".into()).spawn(move || {
            let mut reported = false;
            while !exit.is_raised() {
                if let Err(e) = stats.write() {
                    if !reported {
                        eprintln!("kiln-vmm: cannot write stats {}: {e}", stats.path.display());
                        reported = true;
                    }
                }
                std::thread::sleep(PERIOD);
            }
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_holds_each_disk_s_counters() {
        let dir = std::env::temp_dir().join(format!("kiln-stats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("stats.json");
        let counters = Arc::new(DiskCounters::default());
        counters.writes.store(3, Ordering::Relaxed);
        counters.written_bytes.store(12288, Ordering::Relaxed);
        let stats = Stats::new(&path, vec![("root".into(), counters)]);
        stats.write().expect("writes");
        let value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("file")).expect("json");
        assert_eq!(value["disks"][0]["serial"], "root");
        assert_eq!(value["disks"][0]["writes"], 3);
        assert_eq!(value["disks"][0]["written_bytes"], 12288);
        assert_eq!(value["disks"][0]["reads"], 0);
        assert!(!dir.join("stats.tmp").exists(), "renamed into place");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
