//! The cloud's own Ed25519 key (`{data_dir}/cloud.key`, mode 0600): signs downlink
//! messages (acks) so devices can tell them from forgeries.

use rollcall_shared::dsse::KeyPair;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Why the key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not hold a base64 32-byte seed.
    #[error("key file {0}: not a base64 Ed25519 seed")]
    Corrupt(String),
    /// The file is readable by others.
    #[error("key file {path}: mode {mode:o} lets others read the key; chmod 600 it")]
    Permissions {
        /// The file.
        path: String,
        /// Its mode.
        mode: u32,
    },
}

/// Loads the key at `path`, creating it (mode 0600, never overwriting) if missing.
pub fn load_or_create(path: &Path) -> Result<KeyPair, KeyFileError> {
    use base64::Engine;
    let io = |source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyFileError::Permissions {
                    path: path.display().to_string(),
                    mode,
                });
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| KeyFileError::Corrupt(path.display().to_string()))?;
            let seed: [u8; 32] = bytes
                .try_into()
                .map_err(|_| KeyFileError::Corrupt(path.display().to_string()))?;
            Ok(KeyPair::from_seed(seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let key = KeyPair::generate();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
            f.write_all(
                base64::engine::general_purpose::STANDARD
                    .encode(key.seed())
                    .as_bytes(),
            )
            .map_err(io)?;
            f.sync_all().map_err(io)?;
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_created_0600_and_loaded_again() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cloud.key");
        let k = load_or_create(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_or_create(&p).unwrap().public(), k.public());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_create(&p),
            Err(KeyFileError::Permissions { .. })
        ));
    }
}
