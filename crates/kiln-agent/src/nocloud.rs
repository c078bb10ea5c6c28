//! First-boot configuration in cloud-init's NoCloud format: a small FAT volume labelled `CIDATA`
//! holding `meta-data` (`instance-id`, `local-hostname`), `user-data` (`#cloud-config` YAML, or
//! a script starting with `#!`) and optionally `network-config` (version 2, see
//! [`crate::netconfig`]).
//!
//! kilnd writes the volume ([`write_image`]) and attaches it to the VM as a read-only disk with
//! the serial [`SEED_SERIAL`]; cloud-init finds it by its label, Kiln's agent by its serial
//! ([`find_device`], [`read_image`]) and applies what this module parses (see
//! `kiln_agent::firstboot`). Only the part of cloud-config that both apply is modelled here:
//! `hostname`, `ssh_authorized_keys`, `users`, `write_files` and `runcmd`; other keys are kept
//! for cloud-init and ignored by the agent.

use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The virtio-blk serial of the seed disk.
pub const SEED_SERIAL: &str = "cidata";
/// The FAT volume label cloud-init looks for.
pub const SEED_LABEL: [u8; 11] = *b"CIDATA     ";
/// The size of the seed image kilnd writes.
pub const SEED_BYTES: u64 = 2 << 20;
/// The largest file read from a seed.
const MAX_FILE: u64 = 1 << 20;

/// Errors of the NoCloud seed.
#[derive(Debug, thiserror::Error)]
pub enum NoCloudError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the seed has no {0} file")]
    Missing(&'static str),
    #[error("{file} is not valid: {message}")]
    Invalid { file: &'static str, message: String },
}

type Result<T> = std::result::Result<T, NoCloudError>;

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NoCloudError {
    let path = path.to_path_buf();
    move |source| NoCloudError::Io { what, path, source }
}

/// The files of a seed, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    pub meta_data: String,
    pub user_data: String,
    pub network_config: Option<String>,
}

/// `meta-data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaData {
    #[serde(rename = "instance-id")]
    pub instance_id: String,
    #[serde(rename = "local-hostname", default, skip_serializing_if = "Option::is_none")]
    pub local_hostname: Option<String>,
}

/// What `user-data` holds.
#[derive(Debug, Clone, PartialEq)]
pub enum UserData {
    /// `#cloud-config` YAML.
    CloudConfig(CloudConfig),
    /// A script (`#!...`), run once per instance.
    Script(String),
    /// Empty.
    None,
}

/// The part of `#cloud-config` that Kiln's agent applies.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct CloudConfig {
    #[serde(default)]
    pub hostname: Option<String>,
    /// Keys for root (cloud-init gives them to the image's default user).
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    #[serde(default)]
    pub users: Vec<UserEntry>,
    #[serde(default)]
    pub write_files: Vec<WriteFile>,
    #[serde(default)]
    pub runcmd: Vec<RunCmd>,
}

/// An entry of `users`: `default` (the image's default user) or a user.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum UserEntry {
    Default(String),
    User(User),
}

/// A user to create.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct User {
    pub name: String,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    #[serde(default)]
    pub shell: Option<String>,
    #[serde(default)]
    pub gecos: Option<String>,
}

/// A file to write.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WriteFile {
    pub path: String,
    #[serde(default)]
    pub content: String,
    /// `b64`/`base64` or plain text (gzip is not supported by the agent).
    #[serde(default)]
    pub encoding: Option<String>,
    /// Octal, e.g. `'0644'`.
    #[serde(default)]
    pub permissions: Option<String>,
    /// `user:group`.
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub append: bool,
}

/// A `runcmd` entry: a shell line or an argument vector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum RunCmd {
    Shell(String),
    Argv(Vec<String>),
}

impl RunCmd {
    /// The command as an argument vector.
    pub fn argv(&self) -> Vec<String> {
        match self {
            RunCmd::Shell(line) => vec!["/bin/sh".into(), "-c".into(), line.clone()],
            RunCmd::Argv(argv) => argv.clone(),
        }
    }
}

/// Parses `meta-data`.
pub fn parse_meta_data(text: &str) -> Result<MetaData> {
    let meta: MetaData = serde_yaml::from_str(text)
        .map_err(|e| NoCloudError::Invalid { file: "meta-data", message: e.to_string() })?;
    if meta.instance_id.trim().is_empty() {
        return Err(NoCloudError::Invalid {
            file: "meta-data",
            message: "instance-id is empty".into(),
        });
    }
    Ok(meta)
}

/// Parses `user-data`: `#cloud-config` YAML, a `#!` script, or nothing.
pub fn parse_user_data(text: &str) -> Result<UserData> {
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Ok(UserData::None);
    }
    if trimmed.starts_with("#!") {
        return Ok(UserData::Script(text.to_owned()));
    }
    if !trimmed.starts_with("#cloud-config") {
        return Err(NoCloudError::Invalid {
            file: "user-data",
            message: "it starts with neither #cloud-config nor #! (a script)".into(),
        });
    }
    let config: Option<CloudConfig> = serde_yaml::from_str(text)
        .map_err(|e| NoCloudError::Invalid { file: "user-data", message: e.to_string() })?;
    Ok(UserData::CloudConfig(config.unwrap_or_default()))
}

/// Writes a seed image at `path` (a new file of [`SEED_BYTES`], FAT, labelled `CIDATA`).
pub fn write_image(path: &Path, seed: &Seed) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io("cannot create the seed image", path))?;
    file.set_len(SEED_BYTES).map_err(io("cannot size the seed image", path))?;
    fatfs::format_volume(&mut file, fatfs::FormatVolumeOptions::new().volume_label(SEED_LABEL))
        .map_err(io("cannot format the seed image", path))?;
    {
        let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new())
            .map_err(io("cannot open the seed image", path))?;
        let mut files = vec![("meta-data", &seed.meta_data), ("user-data", &seed.user_data)];
        if let Some(network) = &seed.network_config {
            files.push(("network-config", network));
        }
        for (name, text) in files {
            let mut out =
                fs.root_dir().create_file(name).map_err(io("cannot write the seed's", path))?;
            out.write_all(text.as_bytes()).map_err(io("cannot write the seed's", path))?;
            out.flush().map_err(io("cannot write the seed's", path))?;
        }
        fs.unmount().map_err(io("cannot finish the seed image", path))?;
    }
    file.sync_all().map_err(io("cannot sync the seed image", path))
}

/// Reads the seed from a FAT image or block device.
pub fn read_image(path: &Path) -> Result<Seed> {
    let file = std::fs::File::open(path).map_err(io("cannot open the seed", path))?;
    let fs = fatfs::FileSystem::new(file, fatfs::FsOptions::new().update_accessed_date(false))
        .map_err(io("cannot read the FAT file system of the seed", path))?;
    let root = fs.root_dir();
    let read = |name: &'static str| -> Result<Option<String>> {
        let file = match root.open_file(name) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("cannot open the seed's file of", path)(e)),
        };
        let mut text = String::new();
        file.take(MAX_FILE)
            .read_to_string(&mut text)
            .map_err(io("cannot read the seed's file of", path))?;
        Ok(Some(text))
    };
    Ok(Seed {
        meta_data: read("meta-data")?.ok_or(NoCloudError::Missing("meta-data"))?,
        user_data: read("user-data")?.unwrap_or_default(),
        network_config: read("network-config")?,
    })
}

/// The block device whose virtio serial is [`SEED_SERIAL`], if the guest has one.
pub fn find_device() -> Option<PathBuf> {
    let entries = std::fs::read_dir("/sys/block").ok()?;
    entries.flatten().find_map(|entry| {
        let serial = std::fs::read_to_string(entry.path().join("serial")).ok()?;
        (serial.trim() == SEED_SERIAL).then(|| Path::new("/dev").join(entry.file_name()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_seed_reads_back_the_same() {
        let dir = std::env::temp_dir().join(format!("kiln-nocloud-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("seed.img");
        let seed = Seed {
            meta_data: "instance-id: i-1\nlocal-hostname: alpha\n".into(),
            user_data: "#cloud-config\nhostname: alpha\n".into(),
            network_config: Some("version: 2\n".into()),
        };
        write_image(&path, &seed).expect("writes");
        assert_eq!(read_image(&path).expect("reads"), seed);
        // The label is where blkid (and so cloud-init) looks: offset 43 of a FAT12/16 boot
        // sector.
        let bytes = std::fs::read(&path).expect("image");
        assert_eq!(&bytes[43..54], &SEED_LABEL);
        assert!(write_image(&path, &seed).is_err(), "an existing file is never overwritten");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn user_data_kinds_and_fields_parse() {
        let text = "#cloud-config\nhostname: h\nssh_authorized_keys: [ssh-ed25519 AAA k]\n\
                    users:\n  - default\n  - name: ann\n    shell: /bin/bash\n    \
                    ssh_authorized_keys: [ssh-rsa B]\nwrite_files:\n  - path: /etc/x\n    \
                    content: aGk=\n    encoding: b64\n    permissions: '0600'\n\
                    runcmd:\n  - echo hi > /tmp/y\n  - [touch, /tmp/z]\npackages: [vim]\n";
        let UserData::CloudConfig(c) = parse_user_data(text).expect("parses") else {
            panic!("not cloud-config")
        };
        assert_eq!(c.hostname.as_deref(), Some("h"));
        assert_eq!(c.ssh_authorized_keys, ["ssh-ed25519 AAA k"]);
        assert_eq!(c.users.len(), 2);
        assert!(matches!(&c.users[1], UserEntry::User(u) if u.name == "ann"));
        assert_eq!(c.write_files[0].permissions.as_deref(), Some("0600"));
        assert_eq!(c.runcmd[1].argv(), ["touch", "/tmp/z"]);
        assert_eq!(c.runcmd[0].argv()[..2], ["/bin/sh", "-c"]);
        assert!(matches!(parse_user_data("#!/bin/sh\necho\n"), Ok(UserData::Script(_))));
        assert_eq!(parse_user_data("").expect("empty"), UserData::None);
        assert_eq!(
            parse_user_data("#cloud-config\n").expect("empty"),
            UserData::CloudConfig(CloudConfig::default())
        );
        let err = parse_user_data("hostname: h\n").expect_err("no header").to_string();
        assert!(err.contains("#cloud-config"), "{err}");
        let err = parse_user_data("#cloud-config\nusers: 7\n").expect_err("bad").to_string();
        assert!(err.contains("user-data"), "{err}");
        let err = parse_meta_data("local-hostname: a\n").expect_err("no id").to_string();
        assert!(err.contains("instance-id"), "{err}");
    }
}
