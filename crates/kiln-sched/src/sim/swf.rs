//! Reader for the Parallel Workloads Archive's Standard Workload Format (SWF), plain or gzip.
//!
//! A data line has 18 whitespace-separated numeric fields; header and comment lines start with `;`.
//! Fields used (1-based): 1 job number, 2 submit time, 3 wait time (recorded), 4 run time,
//! 5 allocated processors, 8 requested processors, 9 requested time, 11 status (1 completed,
//! 0 failed, 5 cancelled, -1 unknown), 12 user id. `-1` means "unknown" in every field.
//!
//! Mapping to a job (each rule is counted when it applies, see [`super::Workload`]):
//! - processors = field 8 if > 0, else field 5; one processor = one vCPU. No processors at all:
//!   **skipped** ("no processor count").
//! - run time = field 4. Unknown (< 0): **skipped** ("unknown run time"). A job with status 5
//!   (cancelled) and run time 0 never ran: **skipped** ("cancelled before it started"). A cancelled
//!   job that ran (run time > 0) is kept for the time it held its processors; failed jobs (status 0)
//!   are kept too, since they occupied the machine.
//! - declared run time = field 9 if > 0, else the real run time ("requested time unknown: real run
//!   time used"). A job that ran longer than it declared is kept with its real run time and counted.
//! - submit time < 0: **skipped** ("unknown submit time").
//! - memory: SWF memory fields are ignored; requests ask for 0 MiB (memory does not limit).
//! - priority: SWF has none, so a queue class is derived from the declared run time, as HPC sites do
//!   with short/medium/long queues: <= 1 h -> 2, <= 4 h -> 1, longer -> 0.
//! - owner = field 12 (user) if >= 0, else 0.
//! - recorded wait = field 3 if >= 0.
//!
//! A data line with fewer than 18 fields or a non-numeric field is an error naming its line.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use super::{Job, Workload};
use crate::model::Request;

/// Errors reading an SWF trace.
#[derive(Debug, thiserror::Error)]
pub enum SwfError {
    /// The file cannot be opened.
    #[error("cannot open SWF trace {path}")]
    Open {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading failed (I/O, bad gzip data, or text that is not UTF-8).
    #[error("cannot read SWF trace {source_name} at line {line}")]
    Read {
        /// The trace.
        source_name: String,
        /// 1-based line number.
        line: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line that is not a valid SWF record.
    #[error("{source_name}:{line}: malformed SWF line: {reason}")]
    Malformed {
        /// The trace.
        source_name: String,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        reason: String,
    },
}

/// Read an SWF file (gzip is detected by its magic bytes), keeping at most `limit` jobs.
pub fn read_swf_path(path: &Path, limit: Option<usize>) -> Result<Workload, SwfError> {
    let file =
        File::open(path).map_err(|source| SwfError::Open { path: path.to_path_buf(), source })?;
    let mut reader = BufReader::new(file);
    let name = path.display().to_string();
    let gz = reader
        .fill_buf()
        .map_err(|source| SwfError::Read { source_name: name.clone(), line: 1, source })?
        .starts_with(&[0x1f, 0x8b]);
    if gz {
        parse_swf(BufReader::new(MultiGzDecoder::new(reader)), &name, limit)
    } else {
        parse_swf(reader, &name, limit)
    }
}

/// Parse SWF text from `input`; `source_name` names it in errors.
pub fn parse_swf<R: Read>(
    input: BufReader<R>,
    source_name: &str,
    limit: Option<usize>,
) -> Result<Workload, SwfError> {
    let mut w = Workload { source: source_name.to_string(), ..Workload::default() };
    let mut ids = std::collections::HashSet::new();
    for (n, line) in input.lines().enumerate() {
        let lineno = n as u64 + 1;
        let line = line.map_err(|source| SwfError::Read {
            source_name: source_name.to_string(),
            line: lineno,
            source,
        })?;
        let text = line.trim();
        if text.is_empty() || text.starts_with(';') {
            continue;
        }
        if limit.is_some_and(|l| w.jobs.len() >= l) {
            break;
        }
        let malformed = |reason: String| SwfError::Malformed {
            source_name: source_name.to_string(),
            line: lineno,
            reason,
        };
        let fields = parse_fields(text).map_err(malformed)?;
        w.records += 1;
        if let Some(job) = to_job(&fields, &mut w) {
            if !ids.insert(job.request.id) {
                return Err(malformed(format!("job number {} appears twice", job.request.id)));
            }
            w.jobs.push(job);
        }
    }
    w.finish();
    Ok(w)
}

fn parse_fields(text: &str) -> Result<[i64; 18], String> {
    let mut out = [0i64; 18];
    let mut count = 0;
    for (i, tok) in text.split_whitespace().enumerate() {
        if i >= 18 {
            return Err(format!("more than 18 fields (field {} is {:?})", i + 1, short(tok)));
        }
        let v: f64 = tok
            .parse()
            .map_err(|_| format!("field {} is not a number: {:?}", i + 1, short(tok)))?;
        if !v.is_finite() {
            return Err(format!("field {} is not a finite number: {:?}", i + 1, short(tok)));
        }
        // Some logs write fractional values (e.g. average CPU time); times are whole seconds.
        out[i] = v.round() as i64;
        count = i + 1;
    }
    if count < 18 {
        return Err(format!("{count} fields, expected 18"));
    }
    Ok(out)
}

/// At most 24 characters of `tok`, so that an error about a binary or huge line stays one line.
fn short(tok: &str) -> String {
    let mut s: String = tok.chars().take(24).collect();
    if s.len() < tok.len() {
        s.push_str("...");
    }
    s
}

fn to_job(f: &[i64; 18], w: &mut Workload) -> Option<Job> {
    let field = |n: usize| f[n - 1];
    let (id, submit, wait, run, alloc, req_procs, req_time, status, user) = (
        field(1),
        field(2),
        field(3),
        field(4),
        field(5),
        field(8),
        field(9),
        field(11),
        field(12),
    );
    if status == 5 && run <= 0 {
        w.skip("cancelled before it started (status 5, run time <= 0)");
        return None;
    }
    if run < 0 {
        w.skip("unknown run time (field 4 < 0)");
        return None;
    }
    let procs = if req_procs > 0 { req_procs } else { alloc };
    if procs <= 0 {
        w.skip("no processor count (fields 5 and 8 <= 0)");
        return None;
    }
    if req_procs <= 0 {
        w.adjust("requested processors unknown: allocated processors used");
    }
    if submit < 0 || id < 0 {
        w.skip("unknown submit time or job number");
        return None;
    }
    let declared = if req_time > 0 {
        req_time
    } else {
        w.adjust("requested time unknown: real run time used as declared");
        run
    };
    if run > declared {
        w.adjust("ran longer than its requested time (kept, real run time)");
    }
    let priority = match declared {
        d if d <= 3600 => 2,
        d if d <= 4 * 3600 => 1,
        _ => 0,
    };
    Some(Job {
        request: Request {
            id: id as u64,
            vcpus: procs as u64,
            memory_mib: 0,
            priority,
            expected_runtime: declared as u64,
            submit_time: submit as u64,
            owner: u32::try_from(user).unwrap_or(0),
        },
        runtime: run as u64,
        recorded_wait: u64::try_from(wait).ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Workload, SwfError> {
        parse_swf(BufReader::new(text.as_bytes()), "test", None)
    }

    const HEADER: &str = "; MaxProcs: 100\n;\n";

    #[test]
    fn a_record_becomes_a_job() {
        let w = parse(&format!(
            "{HEADER}   15   599850 192180   3477    4     -1    -1    4  53940    -1  1  12  12  -1 -1 -1 -1 -1\n"
        ))
        .expect("valid");
        assert_eq!(w.jobs.len(), 1);
        let j = w.jobs[0];
        assert_eq!((j.request.id, j.request.submit_time, j.request.vcpus), (15, 599850, 4));
        assert_eq!(
            (j.runtime, j.request.expected_runtime, j.recorded_wait),
            (3477, 53940, Some(192180))
        );
        assert_eq!((j.request.owner, j.request.priority), (12, 0));
    }

    #[test]
    fn cancelled_and_processorless_jobs_are_counted_not_dropped() {
        let w = parse(
            "1 0 0 0 4 -1 -1 4 100 -1 5 1 1 -1 -1 -1 -1 -1\n\
             2 0 0 50 -1 -1 -1 -1 100 -1 1 1 1 -1 -1 -1 -1 -1\n\
             3 0 0 50 2 -1 -1 -1 -1 -1 5 1 1 -1 -1 -1 -1 -1\n",
        )
        .expect("valid");
        assert_eq!(w.records, 3);
        assert_eq!(w.jobs.len(), 1);
        assert_eq!(w.skipped.values().sum::<u64>(), 2);
        // Job 3: cancelled but it ran; processors from field 5, declared time from its run time.
        assert_eq!((w.jobs[0].request.vcpus, w.jobs[0].request.expected_runtime), (2, 50));
        assert_eq!(w.adjusted.values().sum::<u64>(), 2);
    }

    #[test]
    fn malformed_line_reports_its_number() {
        let err = parse(&format!("{HEADER}1 2 3\n")).expect_err("too few fields");
        assert!(matches!(err, SwfError::Malformed { line: 3, .. }), "{err}");
        let err =
            parse("1 0 0 x 4 -1 -1 4 100 -1 1 1 1 -1 -1 -1 -1 -1\n").expect_err("not a number");
        assert!(err.to_string().contains(":1: malformed SWF line: field 4"), "{err}");
    }

    #[test]
    fn a_duplicate_job_number_is_an_error() {
        let err = parse(
            "1 0 0 5 1 -1 -1 1 10 -1 1 1 1 -1 -1 -1 -1 -1\n1 1 0 5 1 -1 -1 1 10 -1 1 1 1 -1 -1 -1 -1 -1\n",
        )
        .expect_err("duplicate");
        assert!(matches!(err, SwfError::Malformed { line: 2, .. }), "{err}");
    }

    #[test]
    fn limit_keeps_the_first_jobs() {
        let text = "1 0 0 5 1 -1 -1 1 10 -1 1 1 1 -1 -1 -1 -1 -1\n\
                    2 1 0 5 1 -1 -1 1 10 -1 1 1 1 -1 -1 -1 -1 -1\n";
        let w = parse_swf(BufReader::new(text.as_bytes()), "t", Some(1)).expect("valid");
        assert_eq!(w.jobs.len(), 1);
    }
}
