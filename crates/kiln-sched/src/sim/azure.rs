//! Reader for the Azure 2017 VM trace as re-encoded by Huawei Cloud (`shared/traces/azure-v1`).
//!
//! Four files, found next to each other:
//! - flavors, e.g. `v1.dev.txt`: `<t> <flavor>,<flavor>,|,<flavor>,...` per 5-minute arrival bin;
//!   letters are VM sizes, `|` ends a batch (one tenant's VMs in that bin);
//! - lifetimes, e.g. `v1.dev.c2100000.txt`: the same layout with `U<bin>` (ended before the cut) or
//!   `C<bin>` (still running at the cut); the cut time is the number after `.c` in the file name;
//! - `flav_map.txt`: `<vCPUs>,<memory GB> <letter>`;
//! - `v1.interval_map.txt`: `<seconds> <bin>` lines; bin `k`'s lower bound is the smallest number of
//!   seconds mapped to `k`, so bin `k` covers `[lower(k), lower(k+1))`.
//!
//! Rules chosen here:
//! - **arrival**: every VM of a line arrives at that line's timestamp `t` (the end of its 5-minute
//!   bin; the trace does not say where inside the bin), in the order written.
//! - **duration of `U<k>`**: the midpoint of the bin, `(lower(k) + lower(k+1)) / 2` (so bin 0,
//!   `[0, 300)`, gives 150 s); the open-ended last bin gives its lower bound. A VM that ended before
//!   the cut cannot outlive it, so the duration is capped at `cut - t` (counted in `adjusted`).
//! - **duration of `C<k>`**: the VM runs until the cut: `cut - t` (the bin only says how long it had
//!   run by then, which is that same amount). A `C` VM arriving at or after the cut is skipped.
//! - **declared run time** = the duration above (the trace has no user estimate, so SJF and EASY
//!   get an oracle here), **priority** 0 for all (the trace has none; priority equals FCFS),
//!   **owner** = the batch (a fresh owner per batch: tenants are not linked across bins).
//! - memory GB are GiB-sized: MiB = round(GB * 1024).
//!
//! A line whose timestamp or batch layout differs between the two files, an unknown flavor letter or
//! bin, or a non-numeric field is an error naming the file and line.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::{Job, Workload};
use crate::model::{Request, Resources, Time};

/// Errors reading the Azure trace.
#[derive(Debug, thiserror::Error)]
pub enum AzureError {
    /// A file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The trace files cannot be found from the given path.
    #[error("{0}")]
    Layout(String),
    /// A line that does not follow the format.
    #[error("{path}:{line}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        reason: String,
    },
}

/// The four files of one Azure trace split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzurePaths {
    /// Flavors per arrival bin.
    pub flavors: PathBuf,
    /// Lifetimes per arrival bin.
    pub lifetimes: PathBuf,
    /// Letter -> size.
    pub flavor_map: PathBuf,
    /// Seconds -> lifetime bin.
    pub interval_map: PathBuf,
    /// The censoring time, from the lifetimes file name.
    pub cut: Time,
}

impl AzurePaths {
    /// Find the files from a directory (which must hold exactly one `*.c<cut>.txt`), the flavor
    /// file, or the lifetime file.
    pub fn locate(path: &Path) -> Result<Self, AzureError> {
        let read_err = |source| AzureError::Read { path: path.to_path_buf(), source };
        let (dir, lifetimes) = if path.is_dir() {
            let mut found = Vec::new();
            for entry in fs::read_dir(path).map_err(read_err)? {
                let p = entry.map_err(read_err)?.path();
                if cut_of(&p).is_some() {
                    found.push(p);
                }
            }
            found.sort();
            match found.as_slice() {
                [one] => (path.to_path_buf(), one.clone()),
                [] => {
                    return Err(AzureError::Layout(format!(
                        "no lifetime file (*.c<cut>.txt) in {}",
                        path.display()
                    )))
                }
                _ => {
                    return Err(AzureError::Layout(format!(
                        "several lifetime files (*.c<cut>.txt) in {}; name one",
                        path.display()
                    )))
                }
            }
        } else {
            let dir = path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            if cut_of(path).is_some() {
                (dir, path.to_path_buf())
            } else {
                let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
                let mut found: Vec<PathBuf> = fs::read_dir(&dir)
                    .map_err(read_err)?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        cut_of(p).is_some()
                            && p.file_name()
                                .and_then(|n| n.to_str())
                                .is_some_and(|n| n.starts_with(&format!("{stem}.c")))
                    })
                    .collect();
                found.sort();
                let Some(first) = found.into_iter().next() else {
                    return Err(AzureError::Layout(format!(
                        "no lifetime file {stem}.c<cut>.txt next to {}",
                        path.display()
                    )));
                };
                (dir, first)
            }
        };
        let cut = cut_of(&lifetimes).unwrap_or_default();
        let name = lifetimes.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let flavors_name = format!("{}.txt", name.rsplit_once(".c").map_or(name, |(s, _)| s));
        Ok(Self {
            flavors: dir.join(flavors_name),
            lifetimes,
            flavor_map: dir.join("flav_map.txt"),
            interval_map: dir.join("v1.interval_map.txt"),
            cut,
        })
    }
}

/// The cut time in a name like `v1.dev.c2100000.txt`.
fn cut_of(path: &Path) -> Option<Time> {
    let name = path.file_name()?.to_str()?.strip_suffix(".txt")?;
    let (_, digits) = name.rsplit_once(".c")?;
    digits.parse().ok()
}

fn read(path: &Path) -> Result<String, AzureError> {
    fs::read_to_string(path).map_err(|source| AzureError::Read { path: path.to_path_buf(), source })
}

/// Read the trace found from `path` (see [`AzurePaths::locate`]), keeping at most `limit` VMs.
pub fn read_azure_path(path: &Path, limit: Option<usize>) -> Result<Workload, AzureError> {
    let p = AzurePaths::locate(path)?;
    let flavors = parse_flavor_map(&read(&p.flavor_map)?, &p.flavor_map)?;
    let bins = parse_interval_map(&read(&p.interval_map)?, &p.interval_map)?;
    let mut w = parse_azure(
        &read(&p.flavors)?,
        &read(&p.lifetimes)?,
        &Tables { flavors, bins, cut: p.cut },
        (&p.flavors, &p.lifetimes),
        limit,
    )?;
    w.source = path.display().to_string();
    Ok(w)
}

/// The maps a trace needs.
#[derive(Debug, Clone)]
pub struct Tables {
    /// Letter -> size.
    pub flavors: BTreeMap<char, Resources>,
    /// Lower bound (seconds) of each lifetime bin, by bin index.
    pub bins: Vec<Time>,
    /// The censoring time.
    pub cut: Time,
}

fn malformed(path: &Path, line: usize, reason: String) -> AzureError {
    AzureError::Malformed { path: path.to_path_buf(), line: line as u64 + 1, reason }
}

/// Parse `flav_map.txt`.
pub fn parse_flavor_map(text: &str, path: &Path) -> Result<BTreeMap<char, Resources>, AzureError> {
    let mut map = BTreeMap::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad =
            |why: &str| malformed(path, n, format!("{why} (expected `<vCPUs>,<GB> <letter>`)"));
        let (size, letter) = line.trim().split_once(' ').ok_or_else(|| bad("no letter"))?;
        let (v, m) = size.split_once(',').ok_or_else(|| bad("no comma"))?;
        let v: u64 = v.parse().map_err(|_| bad("vCPUs not a whole number"))?;
        let m: f64 = m.parse().map_err(|_| bad("memory not a number"))?;
        let mut chars = letter.trim().chars();
        let (Some(c), None) = (chars.next(), chars.next()) else {
            return Err(bad("not one letter"));
        };
        if v == 0 || !m.is_finite() || m < 0.0 {
            return Err(bad("empty or negative size"));
        }
        map.insert(c, Resources::new(v, (m * 1024.0).round() as u64));
    }
    Ok(map)
}

/// Parse `v1.interval_map.txt` into the lower bound of each bin.
pub fn parse_interval_map(text: &str, path: &Path) -> Result<Vec<Time>, AzureError> {
    let mut lower: BTreeMap<usize, Time> = BTreeMap::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = || malformed(path, n, "expected `<seconds> <bin>`".to_string());
        let (s, b) = line.trim().split_once(' ').ok_or_else(bad)?;
        let s: Time = s.trim().parse().map_err(|_| bad())?;
        let b: usize = b.trim().parse().map_err(|_| bad())?;
        let e = lower.entry(b).or_insert(s);
        *e = (*e).min(s);
    }
    let bins: Vec<Time> = lower.values().copied().collect();
    if lower.keys().enumerate().any(|(i, &b)| i != b) || bins.windows(2).any(|w| w[0] >= w[1]) {
        return Err(AzureError::Layout(format!(
            "{}: bins must be numbered 0, 1, 2, ... with increasing lower bounds",
            path.display()
        )));
    }
    Ok(bins)
}

/// Duration of lifetime bin `k` by the midpoint rule (module docs), before capping.
pub fn bin_midpoint(bins: &[Time], k: usize) -> Option<Time> {
    let lo = *bins.get(k)?;
    Some(bins.get(k + 1).map_or(lo, |hi| lo + (hi - lo) / 2))
}

/// Parse the flavor and lifetime texts into a workload.
pub fn parse_azure(
    flavors: &str,
    lifetimes: &str,
    tables: &Tables,
    paths: (&Path, &Path),
    limit: Option<usize>,
) -> Result<Workload, AzureError> {
    let mut w = Workload::default();
    let mut owner: u32 = 0;
    let mut life_lines = lifetimes.lines().enumerate();
    'lines: for (n, fline) in flavors.lines().enumerate() {
        if fline.trim().is_empty() {
            continue;
        }
        let Some((ln, lline)) = life_lines.by_ref().find(|(_, l)| !l.trim().is_empty()) else {
            return Err(malformed(paths.1, n, "lifetime file ends before the flavor file".into()));
        };
        let (ft, ftoks) =
            split_line(fline).ok_or_else(|| malformed(paths.0, n, "no timestamp".into()))?;
        let (lt, ltoks) =
            split_line(lline).ok_or_else(|| malformed(paths.1, ln, "no timestamp".into()))?;
        let t: Time =
            ft.parse().map_err(|_| malformed(paths.0, n, format!("bad timestamp {ft:?}")))?;
        if ft != lt || ftoks.len() != ltoks.len() {
            return Err(malformed(
                paths.1,
                ln,
                format!("does not match line {} of the flavor file (time or VM count)", n + 1),
            ));
        }
        owner = owner.wrapping_add(1);
        for (f, l) in ftoks.iter().zip(&ltoks) {
            if *f == "|" || *l == "|" {
                if f != l {
                    return Err(malformed(paths.1, ln, "batch separators do not line up".into()));
                }
                owner = owner.wrapping_add(1);
                continue;
            }
            if limit.is_some_and(|lim| w.jobs.len() >= lim) {
                break 'lines;
            }
            w.records += 1;
            let mut fc = f.chars();
            let size = match (fc.next(), fc.next()) {
                (Some(c), None) => tables.flavors.get(&c).copied(),
                _ => None,
            }
            .ok_or_else(|| {
                malformed(
                    paths.0,
                    n,
                    format!("unknown flavor {:?}", f.chars().take(24).collect::<String>()),
                )
            })?;
            let bad_life = || {
                malformed(
                    paths.1,
                    ln,
                    format!(
                        "bad lifetime {:?} (expected U<bin> or C<bin>)",
                        l.chars().take(24).collect::<String>()
                    ),
                )
            };
            let kind_len = l.chars().next().map_or(0, char::len_utf8);
            let (kind, bin) = l.split_at(kind_len);
            let bin: usize = bin.parse().map_err(|_| bad_life())?;
            let left = tables.cut.saturating_sub(t);
            let runtime = match kind {
                "U" => {
                    let d = bin_midpoint(&tables.bins, bin).ok_or_else(|| {
                        malformed(
                            paths.1,
                            ln,
                            format!("lifetime bin {bin} is not in the interval map"),
                        )
                    })?;
                    if d > left {
                        w.adjust("uncensored lifetime capped at the cut");
                    }
                    d.min(left)
                }
                "C" if left == 0 => {
                    w.skip("censored VM arriving at or after the cut");
                    continue;
                }
                "C" => {
                    w.adjust("censored lifetime: runs until the cut");
                    left
                }
                _ => return Err(bad_life()),
            };
            let id = w.records;
            w.jobs.push(Job {
                request: Request {
                    id,
                    vcpus: size.vcpus,
                    memory_mib: size.memory_mib,
                    priority: 0,
                    expected_runtime: runtime,
                    submit_time: t,
                    owner,
                },
                runtime,
                recorded_wait: None,
            });
        }
    }
    w.finish();
    Ok(w)
}

fn split_line(line: &str) -> Option<(&str, Vec<&str>)> {
    let (t, rest) = line.trim().split_once(char::is_whitespace)?;
    Some((t, rest.split(',').map(str::trim).filter(|s| !s.is_empty()).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables() -> Tables {
        let flavors = parse_flavor_map("1,0.75 a\n16,112 d\n", Path::new("f")).expect("valid");
        let bins = parse_interval_map("0 0\n300 1\n600 2\n900 2\n1200 3\n", Path::new("i"))
            .expect("valid");
        Tables { flavors, bins, cut: 2000 }
    }

    fn parse(f: &str, l: &str) -> Result<Workload, AzureError> {
        parse_azure(f, l, &tables(), (Path::new("f"), Path::new("l")), None)
    }

    #[test]
    fn bins_use_their_midpoint_and_the_last_its_lower_bound() {
        let t = tables();
        assert_eq!(t.bins, vec![0, 300, 600, 1200]);
        assert_eq!(bin_midpoint(&t.bins, 0), Some(150));
        assert_eq!(bin_midpoint(&t.bins, 2), Some(900));
        assert_eq!(bin_midpoint(&t.bins, 3), Some(1200));
        assert_eq!(bin_midpoint(&t.bins, 4), None);
    }

    #[test]
    fn batches_become_owners_and_censored_vms_run_to_the_cut() {
        let w = parse("300 a,a,|,d,|\n1500 a,|\n", "300 U0,U2,|,C1,|\n1500 U3,|\n").expect("valid");
        let got: Vec<_> = w
            .jobs
            .iter()
            .map(|j| (j.request.submit_time, j.request.vcpus, j.runtime, j.request.owner))
            .collect();
        // The last VM's midpoint (1200 s) is capped at cut - t = 500 s.
        assert_eq!(
            got,
            vec![(300, 1, 150, 1), (300, 1, 900, 1), (300, 16, 1700, 2), (1500, 1, 500, 4)]
        );
        assert_eq!(w.jobs[2].request.memory_mib, 112 * 1024);
        assert_eq!(w.adjusted.values().sum::<u64>(), 2);
    }

    #[test]
    fn mismatched_or_unknown_entries_name_the_line() {
        let e = parse("300 a,|\n600 a,a,|\n", "300 U0,|\n600 U0,|\n").expect_err("count differs");
        assert!(matches!(e, AzureError::Malformed { line: 2, .. }), "{e}");
        let e = parse("300 z,|\n", "300 U0,|\n").expect_err("unknown flavor");
        assert!(e.to_string().contains("unknown flavor"), "{e}");
        let e = parse("300 a,|\n", "300 X0,|\n").expect_err("bad lifetime");
        assert!(e.to_string().contains("l:1"), "{e}");
        let e = parse("300 a,|\n", "300 é9,|\n").expect_err("non-ASCII lifetime");
        assert!(e.to_string().contains("bad lifetime"), "{e}");
        let e = parse("300 a,|\n", "300 U9,|\n").expect_err("unknown bin");
        assert!(e.to_string().contains("bin 9"), "{e}");
    }
}
