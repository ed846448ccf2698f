//! The device's identity: its Ed25519 key and its id, both kept in the data directory.
//!
//! - `{data_dir}/device.key`: standard base64 of the 32-byte secret seed, mode 0600,
//!   created once and never overwritten. A key file that the group or others may read
//!   (mode wider than 0600, e.g. 0644 from provisioning) is refused, with the `chmod 600`
//!   that fixes it, rather than used.
//! - `{data_dir}/device.id`: the device id chosen the first time: the configured one if
//!   set, otherwise `dev-` + the first 16 hex digits of the public key's key id. Stored so
//!   the id stays the same even if it was derived; a later configuration naming a
//!   different id is an error rather than a silent change of identity (the cloud knows
//!   the device by this pair).
//!
//! Both files are created atomically and only if absent: the contents go to a temporary
//! file in the same directory (already with the final mode), which is fsync'd and then
//! hard-linked to the final name (`link` fails if that exists: another process won, and
//! its file is used), after which the temporary name is removed and the directory
//! fsync'd. So a reader never sees an empty or half-written key or id, not even after a
//! power cut during first start. A temporary file that a crash or power cut left behind
//! (it may hold a copy of the secret seed) is removed at the next start once it is older
//! than [`STALE_TMP_AGE`], which no live writer ever takes between creating and removing it.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rollcall_shared::dsse::KeyPair;
use rollcall_shared::DeviceId;
use serde::Serialize;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// File name of the secret key inside the data directory.
pub const KEY_FILE: &str = "device.key";
/// File name of the persisted device id inside the data directory.
pub const ID_FILE: &str = "device.id";

/// Age after which a leftover temporary key or id file is taken to be a crash's leftover.
pub const STALE_TMP_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The key file does not hold base64 of 32 bytes.
    #[error("{}: not a device key (expected standard base64 of a 32-byte seed)", path.display())]
    BadKey {
        /// The key file.
        path: PathBuf,
    },
    /// The id file holds something that is not a device id.
    #[error("{}: {message}", path.display())]
    BadId {
        /// The id file.
        path: PathBuf,
        /// Why it is not one.
        message: String,
    },
    /// The key file may be read by the group or others.
    #[error("{}: the device key may be read by other users (mode {mode:04o}); restrict it with `chmod 600 {}`", path.display(), path.display())]
    LoosePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The configuration names a different device than the one this data directory belongs to.
    #[error("{}: this data directory belongs to device {stored:?}, but the configuration says {configured:?}", path.display())]
    Mismatch {
        /// The id file.
        path: PathBuf,
        /// The id on disk.
        stored: String,
        /// The configured id.
        configured: String,
    },
}

/// The device's key and id.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The signing key.
    pub key: KeyPair,
    /// The device id.
    pub device_id: DeviceId,
}

/// What `init` prints: one line of JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdentityInfo {
    /// The device id.
    pub device_id: String,
    /// Standard base64 of the 32-byte public key.
    pub public_key: String,
}

impl Identity {
    /// The public facts about this identity.
    pub fn info(&self) -> IdentityInfo {
        IdentityInfo {
            device_id: self.device_id.to_string(),
            public_key: self.key.public().to_base64(),
        }
    }
}

/// The id derived from a key when none is configured: `dev-` + 16 hex digits of its key id.
pub fn derived_device_id(key: &KeyPair) -> DeviceId {
    let keyid = key.public().keyid();
    DeviceId::parse(&format!("dev-{}", &keyid[..16])).expect("a hex suffix is a valid device id")
}

/// Creates the data directory if it does not exist: mode 0750, so the group can reach
/// the 0660 capture socket inside it (the key file itself is 0600).
pub fn ensure_data_dir(dir: &Path) -> Result<(), IdentityError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(|source| IdentityError::Io {
            path: dir.to_owned(),
            source,
        })
}

/// Loads the identity in `data_dir`, creating the key and id files the first time.
/// Running it again returns the same identity.
pub fn load_or_create(
    data_dir: &Path,
    configured: Option<&DeviceId>,
) -> Result<Identity, IdentityError> {
    ensure_data_dir(data_dir)?;
    // Best effort: a file that cannot be removed (a read-only mount) must not stop the
    // device from starting.
    if let Err(error) = remove_stale_tmp_files(data_dir, std::time::SystemTime::now()) {
        tracing::warn!(%error, "Could not remove temporary identity files left by a crash");
    }
    let key = load_or_create_key(&data_dir.join(KEY_FILE))?;
    let id_path = data_dir.join(ID_FILE);
    let device_id = match read_device_id(data_dir)? {
        Some(stored) => {
            if let Some(c) = configured {
                if *c != stored {
                    return Err(IdentityError::Mismatch {
                        path: id_path,
                        stored: stored.to_string(),
                        configured: c.to_string(),
                    });
                }
            }
            stored
        }
        None => {
            let id = configured
                .cloned()
                .unwrap_or_else(|| derived_device_id(&key));
            write_new_file(&id_path, format!("{id}\n").as_bytes(), 0o644)?;
            // Another process may have raced us to it; what is on disk wins.
            read_device_id(data_dir)?.unwrap_or(id)
        }
    };
    Ok(Identity { key, device_id })
}

/// The device id stored in `data_dir`, if `init` (or `run`) has chosen one.
pub fn read_device_id(data_dir: &Path) -> Result<Option<DeviceId>, IdentityError> {
    let path = data_dir.join(ID_FILE);
    match fs::read_to_string(&path) {
        Ok(s) => DeviceId::parse(s.trim())
            .map(Some)
            .map_err(|e| IdentityError::BadId {
                path,
                message: e.to_string(),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IdentityError::Io { path, source }),
    }
}

fn load_or_create_key(path: &Path) -> Result<KeyPair, IdentityError> {
    if let Some(k) = read_key(path)? {
        return Ok(k);
    }
    let key = KeyPair::generate();
    let created = write_new_file(
        path,
        format!("{}\n", B64.encode(key.seed())).as_bytes(),
        0o600,
    )?;
    if created {
        Ok(key)
    } else {
        // Lost a race with another process creating it: use theirs.
        read_key(path)?.ok_or_else(|| IdentityError::BadKey {
            path: path.to_owned(),
        })
    }
}

fn read_key(path: &Path) -> Result<Option<KeyPair>, IdentityError> {
    let io_err = |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    let mode = file.metadata().map_err(io_err)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::LoosePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io_err)?;
    let bytes = B64.decode(text.trim()).map_err(|_| IdentityError::BadKey {
        path: path.to_owned(),
    })?;
    let seed: [u8; 32] = bytes.try_into().map_err(|_| IdentityError::BadKey {
        path: path.to_owned(),
    })?;
    Ok(Some(KeyPair::from_seed(seed)))
}

/// Removes the temporary files [`write_new_file`] left behind for the key or id (a crash
/// between writing and removing them) that were last modified before `now` −
/// [`STALE_TMP_AGE`]. Younger ones may belong to a process creating its identity right now.
fn remove_stale_tmp_files(
    data_dir: &Path,
    now: std::time::SystemTime,
) -> Result<(), IdentityError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| IdentityError::Io { path, source }
    };
    let prefixes = [format!(".{KEY_FILE}."), format!(".{ID_FILE}.")];
    for entry in fs::read_dir(data_dir).map_err(io_err(data_dir))? {
        let entry = entry.map_err(io_err(data_dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.ends_with(".tmp") || !prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            continue;
        }
        let path = entry.path();
        let modified = match entry.metadata().and_then(|m| m.modified()) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&path)(e)),
        };
        if now.duration_since(modified).unwrap_or_default() < STALE_TMP_AGE
            || writer_is_alive(&name)
        {
            continue;
        }
        match fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(file = %path.display(), "Removed a temporary identity file left by an earlier crash")
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
    }
    Ok(())
}

/// Whether the process that named temporary file `name` (`.{file}.{pid}-{random}.tmp`)
/// still runs, as far as `/proc` tells: a guard against a wall clock that jumped forward
/// at boot making a live writer's file look old. Without `/proc`, only the age counts.
fn writer_is_alive(name: &str) -> bool {
    let pid = name
        .strip_suffix(".tmp")
        .and_then(|n| n.rsplit_once('.'))
        .and_then(|(_, tail)| tail.split_once('-'))
        .and_then(|(pid, _)| pid.parse::<u32>().ok());
    pid.is_some_and(|pid| Path::new("/proc").join(pid.to_string()).exists())
}

/// Creates a file that must not exist yet, atomically and durably (see the module doc).
/// `Ok(false)` if it already existed; it is then left as it is.
fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<bool, IdentityError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| IdentityError::Io { path, source }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}.{}-{:016x}.tmp",
        std::process::id(),
        fastrand::u64(..)
    ));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    let written = f.write_all(contents).and_then(|()| f.sync_all());
    drop(f);
    let linked = written.and_then(|()| fs::hard_link(&tmp, path));
    let removed = fs::remove_file(&tmp);
    let created = match linked {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(io_err(path)(e)),
    };
    // Gone already is fine: the link (if made) holds the contents.
    match removed {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&tmp)(e)),
        _ => {}
    }
    if created {
        // Make the new directory entry durable too (some file systems cannot sync a
        // directory; the file itself is already on disk).
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temporary_key_file_left_by_a_crash_is_removed_once_stale_and_a_fresh_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        // A pid no process has (above the kernel's pid_max), so only the age counts.
        let stale = dir
            .path()
            .join(".device.key.4294967295-00000000deadbeef.tmp");
        let fresh = dir.path().join(".device.id.4243-00000000deadbeef.tmp");
        let other = dir.path().join(".unrelated.tmp");
        for p in [&stale, &fresh, &other] {
            fs::write(p, "x").unwrap();
        }
        let now = std::time::SystemTime::now();
        let old = now - STALE_TMP_AGE - std::time::Duration::from_secs(1);
        for p in [&stale, &other] {
            fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        // An old file of a process that still runs (this one) is left alone too.
        let live = dir.path().join(format!(
            ".device.key.{}-00000000deadbeef.tmp",
            std::process::id()
        ));
        fs::write(&live, "x").unwrap();
        fs::File::options()
            .write(true)
            .open(&live)
            .unwrap()
            .set_modified(old)
            .unwrap();
        remove_stale_tmp_files(dir.path(), now).unwrap();
        assert!(!stale.exists(), "a stale temporary key file is removed");
        assert!(
            live.exists(),
            "a live writer's file is kept, however old it looks"
        );
        assert!(fresh.exists(), "a young one may belong to a live writer");
        assert!(other.exists(), "files that are not ours are left alone");
        // And load_or_create runs the sweep (the fresh one is still young).
        load_or_create(dir.path(), None).unwrap();
        assert!(fresh.exists());
    }

    #[test]
    fn the_key_file_is_created_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path(), None).unwrap();
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn loading_twice_gives_the_same_identity() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path(), None).unwrap();
        let b = load_or_create(dir.path(), None).unwrap();
        assert_eq!(a.info(), b.info());
        assert!(a.device_id.as_str().starts_with("dev-"));
        assert_eq!(a.device_id.as_str().len(), 4 + 16);
        assert_eq!(a.device_id, derived_device_id(&a.key));
    }

    #[test]
    fn an_existing_key_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let first = load_or_create(dir.path(), None).unwrap();
        let before = fs::read(&path).unwrap();
        assert!(!write_new_file(&path, b"other", 0o600).unwrap());
        assert_eq!(fs::read(&path).unwrap(), before);
        assert_eq!(
            load_or_create(dir.path(), None).unwrap().info(),
            first.info()
        );
    }

    #[test]
    fn a_configured_id_is_used_and_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let id = DeviceId::parse("coffee-0001").unwrap();
        let a = load_or_create(dir.path(), Some(&id)).unwrap();
        assert_eq!(a.device_id, id);
        // Later runs without the flag keep it.
        assert_eq!(load_or_create(dir.path(), None).unwrap().device_id, id);
        let other = DeviceId::parse("coffee-0002").unwrap();
        assert!(matches!(
            load_or_create(dir.path(), Some(&other)),
            Err(IdentityError::Mismatch { .. })
        ));
    }

    #[test]
    fn a_corrupt_key_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        fs::write(&path, "not base64!").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            load_or_create(dir.path(), None),
            Err(IdentityError::BadKey { .. })
        ));
    }

    #[test]
    fn a_key_file_others_may_read_is_refused_with_the_fix_named() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), None).unwrap();
        let path = dir.path().join(KEY_FILE);
        for mode in [0o644, 0o640, 0o604, 0o660] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let e = load_or_create(dir.path(), None).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains(&path.display().to_string())
                    && msg.contains(&format!("chmod 600 {}", path.display())),
                "{msg}"
            );
        }
        // Tighter than 0600 is fine, and the key is the same as before.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(
            load_or_create(dir.path(), None).unwrap().info(),
            first.info()
        );
    }

    #[test]
    fn a_new_file_is_never_seen_half_written_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let contents = vec![b'k'; 4 << 20];
        for i in 0..10 {
            let path = dir.path().join(format!("f{i}"));
            let reader = {
                let path = path.clone();
                std::thread::spawn(move || loop {
                    match fs::read(&path) {
                        Ok(seen) => return seen.len(),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => std::thread::yield_now(),
                        Err(e) => panic!("{e}"),
                    }
                })
            };
            assert!(write_new_file(&path, &contents, 0o600).unwrap());
            assert_eq!(
                reader.join().unwrap(),
                contents.len(),
                "file {i} was seen half written"
            );
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!write_new_file(&dir.path().join("f0"), b"other", 0o600).unwrap());
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let expected: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
        assert_eq!(names, expected, "no temporary file is left behind");
    }
}
