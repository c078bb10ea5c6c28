//! Images in the state store: the `images` table, and the references to them (`vms.image`)
//! and from root volumes to their VM (`volumes.root_of`). An image is usable only in state
//! `ready`; whether it is, and that no VM uses an image being deleted, is checked in the
//! transaction of the write it guards.

use super::{now_ms, Db, DbError, Result};
use kiln_api::ImageState;
use rusqlite::{params, Connection, OptionalExtension};

/// An image row.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRow {
    pub name: String,
    pub project: String,
    pub state: ImageState,
    /// `built` or `imported`.
    pub source: String,
    pub suite: Option<String>,
    pub packages: Vec<String>,
    pub size_bytes: u64,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub progress: String,
    pub error: Option<String>,
    pub build_ms: Option<i64>,
    pub created_ms: i64,
    /// The VMs defined from it.
    pub used_by: Vec<String>,
}

/// What a new image row holds.
#[derive(Debug, Clone)]
pub struct NewImage<'a> {
    pub name: &'a str,
    pub project: &'a str,
    pub source: &'a str,
    pub suite: Option<&'a str>,
    pub packages: &'a [String],
}

/// The files of a finished image.
#[derive(Debug, Clone)]
pub struct ReadyImage {
    pub size_bytes: u64,
    pub kernel: String,
    pub initrd: Option<String>,
    pub build_ms: i64,
}

impl Db {
    /// Records an image in state `building`.
    pub fn create_image(&self, new: &NewImage<'_>) -> Result<ImageRow> {
        let conn = self.lock();
        let inserted = conn.execute(
            "INSERT INTO images (name, project, state, source, suite, packages, created_ms)
             VALUES (?1, ?2, 'building', ?3, ?4, ?5, ?6) ON CONFLICT(name) DO NOTHING",
            params![new.name, new.project, new.source, new.suite, new.packages.join(","), now_ms()],
        )?;
        if inserted == 0 {
            return Err(DbError::ImageExists(new.name.to_owned()));
        }
        get_image(&conn, new.name)
    }

    /// One image.
    pub fn image(&self, name: &str) -> Result<ImageRow> {
        get_image(&self.lock(), name)
    }

    /// Every image, by name.
    pub fn images(&self) -> Result<Vec<ImageRow>> {
        let conn = self.lock();
        let names: Vec<String> = conn
            .prepare("SELECT name FROM images ORDER BY name")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        names.iter().map(|name| get_image(&conn, name)).collect()
    }

    /// The last message of a running build.
    pub fn set_image_progress(&self, name: &str, progress: &str) -> Result<()> {
        self.lock().execute(
            "UPDATE images SET progress = ?2 WHERE name = ?1 AND state = 'building'",
            params![name, progress],
        )?;
        Ok(())
    }

    /// A build or import finished: its files are in place.
    pub fn image_ready(&self, name: &str, ready: &ReadyImage) -> Result<ImageRow> {
        let conn = self.lock();
        conn.execute(
            "UPDATE images SET state = 'ready', size_bytes = ?2, kernel = ?3, initrd = ?4,
                 build_ms = ?5, progress = 'done', error = NULL
             WHERE name = ?1 AND state = 'building'",
            params![name, ready.size_bytes as i64, ready.kernel, ready.initrd, ready.build_ms],
        )?;
        get_image(&conn, name)
    }

    /// A build or import failed (its files are gone).
    pub fn image_failed(&self, name: &str, error: &str) -> Result<()> {
        self.lock().execute(
            "UPDATE images SET state = 'failed', error = ?2 WHERE name = ?1 AND state = 'building'",
            params![name, error],
        )?;
        Ok(())
    }

    /// Forgets an image no VM definition uses and that is not being built.
    pub fn delete_image(&self, name: &str) -> Result<ImageRow> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let row = get_image(&tx, name)?;
        if row.state == ImageState::Building {
            return Err(DbError::ImageNotReady {
                image: name.to_owned(),
                state: "building",
                what: "wait for its build to end, then delete it",
            });
        }
        if !row.used_by.is_empty() {
            return Err(DbError::ImageInUse { image: name.to_owned(), vms: row.used_by });
        }
        tx.execute("DELETE FROM images WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok(row)
    }

    /// The root volumes (`volumes.root_of`) whose VM is not defined: left by a create that
    /// kilnd did not finish.
    pub fn orphan_root_volumes(&self) -> Result<Vec<String>> {
        Ok(self
            .lock()
            .prepare(
                "SELECT name FROM volumes WHERE root_of IS NOT NULL
                 AND root_of NOT IN (SELECT name FROM vms) ORDER BY name",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// The root volume of VM `vm`, if it has one.
    pub fn root_volume_of(&self, vm: &str) -> Result<Option<String>> {
        Ok(self
            .lock()
            .query_row("SELECT name FROM volumes WHERE root_of = ?1", [vm], |r| r.get(0))
            .optional()?)
    }
}

/// Fails unless `name` is a ready image (in the transaction that defines a VM from it).
pub(super) fn check_ready(conn: &Connection, name: &str) -> Result<()> {
    let row = get_image(conn, name)?;
    if row.state != ImageState::Ready {
        return Err(DbError::ImageNotReady {
            image: name.to_owned(),
            state: row.state.as_str(),
            what: "only a ready image can be used (kiln image show tells why)",
        });
    }
    Ok(())
}

fn get_image(conn: &Connection, name: &str) -> Result<ImageRow> {
    let row = conn
        .query_row(
            "SELECT name, project, state, source, suite, packages, size_bytes, kernel, initrd,
                 progress, error, build_ms, created_ms FROM images WHERE name = ?1",
            [name],
            |r| {
                let state: String = r.get(2)?;
                let packages: String = r.get(5)?;
                Ok((
                    state,
                    ImageRow {
                        name: r.get(0)?,
                        project: r.get(1)?,
                        state: ImageState::Building,
                        source: r.get(3)?,
                        suite: r.get(4)?,
                        packages: packages
                            .split(',')
                            .filter(|p| !p.is_empty())
                            .map(str::to_owned)
                            .collect(),
                        size_bytes: r.get::<_, i64>(6)? as u64,
                        kernel: r.get(7)?,
                        initrd: r.get(8)?,
                        progress: r.get(9)?,
                        error: r.get(10)?,
                        build_ms: r.get(11)?,
                        created_ms: r.get(12)?,
                        used_by: Vec::new(),
                    },
                ))
            },
        )
        .optional()?;
    let (state, mut row) = row.ok_or_else(|| DbError::NoImage(name.to_owned()))?;
    row.state = ImageState::parse(&state)
        .ok_or_else(|| DbError::Corrupt(format!("image state {state:?}")))?;
    row.used_by = conn
        .prepare("SELECT name FROM vms WHERE image = ?1 ORDER BY name")?
        .query_map([name], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(row)
}
