//! Volumes: `kiln volume create|list|show|resize|delete`, and the size syntax (`10G`) that
//! `kiln volume` takes.

use crate::api_client::{encode, print_json, ApiArgs, CliError, Output};
use crate::table::Table;
use clap::{Args, Subcommand};
use kiln_api::{Client, CreateVolume, ResizeVolume, Volume, VolumeCopy};
use std::io::{IsTerminal, Write};
use std::time::Duration;

#[derive(Debug, Args)]
pub struct VolumeArgs {
    #[command(subcommand)]
    pub command: VolumeCommand,
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create an empty volume (a sparse raw file kilnd keeps); attach it with `kiln create
    /// --disk NAME`.
    Create(CreateArgs),
    /// List the volumes you may see.
    List,
    /// Show one volume.
    Show(NameArg),
    /// Grow a volume (never shrinks); the VMs that list it must not be running.
    Resize(ResizeArgs),
    /// Delete a volume and its data; refused while a VM definition lists it.
    Delete(NameArg),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name: 1-63 of a-z 0-9 - _ . starting with a letter or digit.
    pub name: String,
    /// Size: bytes, or whole units with a binary suffix K, M, G or T (`512M`, `10G`); with
    /// --from-image at least the image's [default there: the image's].
    #[arg(long, value_parser = parse_size, required_unless_present = "from_image")]
    pub size: Option<u64>,
    /// A copy of a ready image's root file system (a reflink where possible, else a sparse
    /// copy), its file system grown to --size.
    #[arg(long, value_name = "IMAGE")]
    pub from_image: Option<String>,
    /// Project (grants on the project cover the volume; its VMs may attach it).
    #[arg(long, default_value = "default")]
    pub project: String,
}

#[derive(Debug, Args)]
pub struct ResizeArgs {
    /// The volume's name.
    pub name: String,
    /// The new size, larger than the current one (same syntax as at create).
    #[arg(long, value_parser = parse_size)]
    pub size: u64,
}

#[derive(Debug, Args)]
pub struct NameArg {
    /// The volume's name.
    pub name: String,
}

/// Parses `N`, `NK`, `NM`, `NG` or `NT` (powers of 1024; `KiB`, `MB` and such are taken too).
pub fn parse_size(text: &str) -> Result<u64, String> {
    kiln_agent::bench::parse_size(text)
}

/// Runs `request`, which makes volume `volume` from an image, while showing on stderr how far
/// kilnd's copy of the image has come (`GET /v1/volumes/{name}/copy`): one line redrawn on a
/// terminal, a line per quarter otherwise.
pub fn with_copy_progress<T: Send>(
    client: &Client,
    volume: &str,
    request: impl FnOnce() -> Result<T, kiln_api::ClientError> + Send,
) -> Result<T, CliError> {
    let path = format!("/v1/volumes/{}/copy", encode(volume));
    let terminal = std::io::stderr().is_terminal();
    std::thread::scope(|scope| {
        let answer = scope.spawn(request);
        let (mut shown, mut quarter) = (false, 0);
        while !answer.is_finished() {
            std::thread::sleep(Duration::from_millis(50));
            let Ok(copy) = client.get::<VolumeCopy>(&path) else { continue };
            let percent = copy.copied_bytes.saturating_mul(100) / copy.total_bytes.max(1);
            let line = format!(
                "copying image {} into volume {}: {percent}% ({} of {} MiB)",
                copy.image,
                copy.volume,
                copy.copied_bytes >> 20,
                copy.total_bytes >> 20
            );
            if terminal {
                eprint!("\r{line}\x1b[K");
            } else if !shown || percent / 25 > quarter {
                eprintln!("{line}");
            }
            (shown, quarter) = (true, percent / 25);
        }
        if shown && terminal {
            eprintln!();
        }
        match answer.join() {
            Ok(result) => result.map_err(CliError::from),
            Err(_) => Err(CliError::Input("the request thread failed".into())),
        }
    })
}

/// `10 GiB`, `512 MiB`, or bytes when not a whole number of MiB.
pub fn human(bytes: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB")] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    if bytes >= 1 << 20 {
        return format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20));
    }
    format!("{bytes} B")
}

/// Runs one volume command.
pub fn run(args: VolumeArgs, api: &ApiArgs) -> Result<(), CliError> {
    let client = api.client()?;
    let out = api.output;
    let path = |name: &str| format!("/v1/volumes/{}", encode(name));
    match args.command {
        VolumeCommand::Create(a) => {
            let spec = CreateVolume {
                name: a.name,
                size_bytes: a.size.unwrap_or(0),
                project: a.project,
                from_image: a.from_image,
            };
            let volume = match &spec.from_image {
                Some(_) => with_copy_progress(&client, &spec.name, || {
                    client.call("POST", "/v1/volumes", Some(&spec))
                })?,
                None => client.call("POST", "/v1/volumes", Some(&spec))?,
            };
            print_volume(out, &volume)
        }
        VolumeCommand::List => {
            let volumes: Vec<Volume> = client.get("/v1/volumes")?;
            if out == Output::Json {
                return print_json(&volumes);
            }
            let mut t = Table::new(&["NAME", "PROJECT", "SIZE", "ALLOCATED", "ATTACHED TO"]);
            for v in &volumes {
                t.row(vec![
                    v.name.clone(),
                    v.project.clone(),
                    human(v.size_bytes),
                    human(v.allocated_bytes),
                    attached(v),
                ]);
            }
            t.print()
        }
        VolumeCommand::Show(a) => print_volume(out, &client.get(&path(&a.name))?),
        VolumeCommand::Resize(a) => {
            let body = ResizeVolume { size_bytes: a.size };
            let resized = client.call("POST", &format!("{}/resize", path(&a.name)), Some(&body))?;
            print_volume(out, &resized)
        }
        VolumeCommand::Delete(a) => {
            client.delete(&path(&a.name))?;
            if out == Output::Json {
                print_json(&serde_json::json!({ "deleted": a.name }))
            } else {
                println!("deleted volume {}", a.name);
                Ok(())
            }
        }
    }
}

fn attached(v: &Volume) -> String {
    if v.attached_to.is_empty() {
        "-".to_owned()
    } else {
        v.attached_to.join(", ")
    }
}

fn print_volume(out: Output, v: &Volume) -> Result<(), CliError> {
    if out == Output::Json {
        return print_json(v);
    }
    let rows = [
        ("name", v.name.clone()),
        ("project", v.project.clone()),
        ("size", format!("{} ({} bytes)", human(v.size_bytes), v.size_bytes)),
        ("allocated", human(v.allocated_bytes)),
        ("attached", attached(v)),
        ("path", v.path.clone()),
        ("created", v.created_at.clone()),
    ];
    let text: String = rows.iter().map(|(k, v)| format!("{k:<9} {v}\n")).collect();
    std::io::stdout().lock().write_all(text.as_bytes()).map_err(CliError::Stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes_and_refuse_the_rest() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("10g"), Ok(10 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        for bad in ["", "G", "1.5G", "10X", "-1M", "99999999999999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(human(10 << 30), "10 GiB");
        assert_eq!(human(3 << 19), "1.5 MiB");
    }
}
