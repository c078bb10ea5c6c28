//! Images: `kiln image build|import|list|show|delete`. A build runs in kilnd; `kiln image build`
//! follows its progress until it is ready (exit 0) or failed (its error, exit 1), unless
//! `--no-wait`.

use crate::api_client::{encode, print_json, ApiArgs, CliError, Output};
use crate::table::Table;
use crate::volume::human;
use clap::{Args, Subcommand};
use kiln_api::{BuildImage, Image, ImageState, ImportImage};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build a bootable Debian system (systemd, udev, Debian's cloud kernel, Kiln's agent as a
    /// service) from Debian's packages; cached by its inputs.
    Build(BuildArgs),
    /// Import an image from an ext4 file system on this host (its kernel and initrd given, or
    /// the newest in its /boot).
    Import(ImportArgs),
    /// List the images you may see.
    List,
    /// Show one image (a build's progress, or why it failed).
    Show(NameArg),
    /// Delete an image no VM uses.
    Delete(NameArg),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Name: 1-63 of a-z 0-9 - _ . starting with a letter or digit.
    pub name: String,
    /// The Debian suite.
    #[arg(long, default_value = "bookworm")]
    pub suite: String,
    /// More packages, comma-separated (`--packages cloud-init,curl`).
    #[arg(long, value_name = "P,...", value_delimiter = ',')]
    pub packages: Vec<String>,
    /// Project (grants on the project cover the image).
    #[arg(long, default_value = "default")]
    pub project: String,
    /// Return once the build has started instead of following it.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Name: 1-63 of a-z 0-9 - _ . starting with a letter or digit.
    pub name: String,
    /// The root file system: an ext4 image file.
    #[arg(long, value_name = "FILE")]
    pub rootfs: PathBuf,
    /// The kernel to boot it with [default: the newest /boot/vmlinuz-* inside it].
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// Its initrd [default: the /boot/initrd.img-* of that kernel, if there is one].
    #[arg(long, value_name = "FILE", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Project (grants on the project cover the image).
    #[arg(long, default_value = "default")]
    pub project: String,
}

#[derive(Debug, Args)]
pub struct NameArg {
    /// The image's name.
    pub name: String,
}

/// Runs one image command.
pub fn run(args: ImageArgs, api: &ApiArgs) -> Result<(), CliError> {
    let client = api.client()?;
    let out = api.output;
    let path = |name: &str| format!("/v1/images/{}", encode(name));
    match args.command {
        ImageCommand::Build(a) => {
            let spec = BuildImage {
                name: a.name.clone(),
                suite: a.suite,
                packages: a.packages,
                project: a.project,
            };
            let mut image: Image = client.call("POST", "/v1/images", Some(&spec))?;
            if a.no_wait {
                return print_image(out, &image);
            }
            let mut shown = String::new();
            while image.state == ImageState::Building {
                if image.progress != shown && out != Output::Json {
                    eprintln!("kiln: {}: {}", image.name, image.progress);
                    shown = image.progress.clone();
                }
                std::thread::sleep(Duration::from_millis(500));
                image = client.get(&path(&a.name))?;
            }
            print_image(out, &image)?;
            match image.state {
                ImageState::Failed => Err(CliError::Failed(format!(
                    "image {} failed: {}",
                    image.name,
                    image.error.unwrap_or_default()
                ))),
                _ => Ok(()),
            }
        }
        ImageCommand::Import(a) => {
            let spec = ImportImage {
                name: a.name,
                rootfs: crate::vm::absolute(&a.rootfs)?,
                kernel: a.kernel.as_deref().map(crate::vm::absolute).transpose()?,
                initrd: a.initrd.as_deref().map(crate::vm::absolute).transpose()?,
                project: a.project,
            };
            print_image(out, &client.call("POST", "/v1/images/import", Some(&spec))?)
        }
        ImageCommand::List => {
            let images: Vec<Image> = client.get("/v1/images")?;
            if out == Output::Json {
                return print_json(&images);
            }
            let mut t = Table::new(&["NAME", "PROJECT", "STATE", "SOURCE", "SIZE", "USED BY"]);
            for i in &images {
                t.row(vec![
                    i.name.clone(),
                    i.project.clone(),
                    state(i),
                    i.source.clone(),
                    human(i.size_bytes),
                    if i.used_by.is_empty() { "-".into() } else { i.used_by.join(", ") },
                ]);
            }
            t.print()
        }
        ImageCommand::Show(a) => print_image(out, &client.get(&path(&a.name))?),
        ImageCommand::Delete(a) => {
            client.delete(&path(&a.name))?;
            if out == Output::Json {
                print_json(&serde_json::json!({ "deleted": a.name }))
            } else {
                println!("deleted image {}", a.name);
                Ok(())
            }
        }
    }
}

fn state(i: &Image) -> String {
    match i.state {
        ImageState::Building => "building".into(),
        ImageState::Ready => "ready".into(),
        ImageState::Failed => "failed".into(),
    }
}

fn print_image(out: Output, i: &Image) -> Result<(), CliError> {
    if out == Output::Json {
        return print_json(i);
    }
    let none = || "-".to_owned();
    let rows = [
        ("name", i.name.clone()),
        ("project", i.project.clone()),
        ("state", state(i)),
        ("source", i.source.clone()),
        ("suite", i.suite.clone().unwrap_or_else(none)),
        ("packages", if i.packages.is_empty() { none() } else { i.packages.join(",") }),
        ("size", format!("{} ({} bytes)", human(i.size_bytes), i.size_bytes)),
        ("kernel", i.kernel.clone().unwrap_or_else(none)),
        ("initrd", i.initrd.clone().unwrap_or_else(none)),
        ("build", i.build_secs.map(|s| format!("{s:.1} s")).unwrap_or_else(none)),
        ("progress", i.progress.clone()),
        ("error", i.error.clone().unwrap_or_else(none)),
        ("used by", if i.used_by.is_empty() { none() } else { i.used_by.join(", ") }),
        ("created", i.created_at.clone()),
    ];
    let text: String = rows.iter().map(|(k, v)| format!("{k:<9} {v}\n")).collect();
    std::io::stdout().lock().write_all(text.as_bytes()).map_err(CliError::Stdout)
}
