//! Credentials at rest: sealed with XChaCha20-Poly1305 under a key that never sits in the
//! database, bound to the row they belong to (org, connection, provider as associated data,
//! so a ciphertext copied into another row does not open).
//!
//! Keys live in a key file (`<data-dir>/secret.key`, mode 0600, made at first start), one
//! `<id> <base64 key>` per line, the first line the key new secrets are sealed with; the
//! other lines still open older secrets while a rotation re-encrypts them. Or one key given
//! by `SPRITES_SECRET_KEY` (base64 of 32 bytes), then rotation is the operator's.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use zeroize::Zeroizing;

/// Errors of the vault. None carries key or plaintext bytes.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The key file or variable is unusable.
    #[error("secret key: {0}")]
    Key(String),
    /// A sealed value did not open (wrong row, unknown key, tampered).
    #[error("a stored credential could not be decrypted (key {0})")]
    Open(String),
}

/// What a sealed value belongs to; part of the ciphertext's authentication.
pub struct Binding<'a> {
    /// Org id.
    pub org: &'a str,
    /// Connection id.
    pub connection: &'a str,
    /// Provider name.
    pub provider: &'a str,
}

impl Binding<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for part in [self.org, self.connection, self.provider] {
            v.extend_from_slice(&(part.len() as u32).to_le_bytes());
            v.extend_from_slice(part.as_bytes());
        }
        v
    }
}

/// A sealed value: the id of the key and `nonce || ciphertext`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Key id.
    pub key_id: String,
    /// Nonce (24 bytes) then ciphertext and tag.
    pub blob: Vec<u8>,
}

type Key = SecretBox<[u8; 32]>;

struct Keys {
    current: String,
    all: HashMap<String, Key>,
    stamp: Option<(SystemTime, u64)>,
}

/// The sealing keys of a server.
pub struct Vault {
    file: Option<PathBuf>,
    keys: RwLock<Keys>,
}

fn parse_key(b64: &str) -> Result<Key, VaultError> {
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| VaultError::Key("not base64".into()))?,
    );
    let arr: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| VaultError::Key(format!("{} bytes, want 32", bytes.len())))?;
    Ok(SecretBox::new(Box::new(arr)))
}

fn new_key() -> (String, Zeroizing<String>) {
    let mut k = Zeroizing::new([0u8; 32]);
    rand::thread_rng().fill_bytes(k.as_mut());
    let mut id = [0u8; 4];
    rand::thread_rng().fill_bytes(&mut id);
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    (
        format!("k{id}"),
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(k.as_ref())),
    )
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn read_file(path: &Path) -> Result<Keys, VaultError> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| VaultError::Key(format!("{}: {e}", path.display())))?,
    );
    let mut current = None;
    let mut all = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let (id, key) = line.split_once(' ').ok_or_else(|| {
            VaultError::Key(format!("{}: a line is not `<id> <key>`", path.display()))
        })?;
        all.insert(id.to_string(), parse_key(key)?);
        current.get_or_insert_with(|| id.to_string());
    }
    let current =
        current.ok_or_else(|| VaultError::Key(format!("{} has no key", path.display())))?;
    Ok(Keys {
        current,
        all,
        stamp: stamp(path),
    })
}

fn write_file(path: &Path, lines: &[(String, Zeroizing<String>)]) -> Result<(), VaultError> {
    let tmp = path.with_extension("tmp");
    let err = |e: std::io::Error| VaultError::Key(format!("writing {}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(err)?;
    let mut text = Zeroizing::new(String::from(
        "# Keys sealing the connectors' credentials; the first seals new ones. Keep it secret and backed up.\n",
    ));
    for (id, k) in lines {
        text.push_str(&format!("{id} {}\n", k.as_str()));
    }
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

impl Vault {
    /// The vault of a data dir: the key from `env_key` if given, else the key file, made
    /// with a new key if absent.
    pub fn open(data_dir: &Path, env_key: Option<SecretString>) -> Result<Self, VaultError> {
        if let Some(k) = env_key {
            let key = parse_key(k.expose_secret())
                .map_err(|e| VaultError::Key(format!("SPRITES_SECRET_KEY: {e}")))?;
            return Ok(Vault {
                file: None,
                keys: RwLock::new(Keys {
                    current: "env".into(),
                    all: [("env".to_string(), key)].into(),
                    stamp: None,
                }),
            });
        }
        let path = data_dir.join("secret.key");
        if !path.exists() {
            write_file(&path, &[new_key()])?;
        }
        let mode = std::fs::metadata(&path)
            .map_err(|e| VaultError::Key(e.to_string()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(VaultError::Key(format!(
                "{} is readable by others (mode {:o}); chmod 600 it",
                path.display(),
                mode & 0o777
            )));
        }
        let keys = read_file(&path)?;
        Ok(Vault {
            file: Some(path),
            keys: RwLock::new(keys),
        })
    }

    /// Re-reads the key file if it changed (a rotation by another process).
    pub fn refresh(&self) -> Result<(), VaultError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let now = stamp(path);
        if now == self.keys.read().unwrap_or_else(|e| e.into_inner()).stamp {
            return Ok(());
        }
        let keys = read_file(path)?;
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(())
    }

    /// The id of the key new secrets get.
    pub fn current_key(&self) -> String {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .current
            .clone()
    }

    /// Seals `plain` for `to`, under the current key (the file re-read first if it changed).
    pub fn seal(&self, to: &Binding<'_>, plain: &[u8]) -> Result<Sealed, VaultError> {
        self.refresh()?;
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let key = keys
            .all
            .get(&keys.current)
            .ok_or_else(|| VaultError::Key("no current key".into()))?;
        let cipher = XChaCha20Poly1305::new(key.expose_secret().into());
        let mut nonce = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut nonce);
        let aad = to.aad();
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .map_err(|_| VaultError::Key("encryption failed".into()))?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        Ok(Sealed {
            key_id: keys.current.clone(),
            blob,
        })
    }

    /// Opens a sealed value of `to`.
    pub fn open_sealed(
        &self,
        to: &Binding<'_>,
        s: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        // A stat per call: a rotation in another process is seen at once, and a retired key
        // leaves this process's memory too.
        self.refresh()?;
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let key = keys
            .all
            .get(&s.key_id)
            .ok_or_else(|| VaultError::Open(s.key_id.clone()))?;
        if s.blob.len() < 24 + 16 {
            return Err(VaultError::Open(s.key_id.clone()));
        }
        let cipher = XChaCha20Poly1305::new(key.expose_secret().into());
        let aad = to.aad();
        cipher
            .decrypt(
                XNonce::from_slice(&s.blob[..24]),
                Payload {
                    msg: &s.blob[24..],
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| VaultError::Open(s.key_id.clone()))
    }

    /// Step one of a rotation: a new key, first in the file (so it seals from now on), the
    /// old ones kept to open what is not re-encrypted yet. Returns the new key's id.
    pub fn begin_rotation(&self) -> Result<String, VaultError> {
        let path = self.file.as_ref().ok_or_else(|| {
            VaultError::Key("the key comes from SPRITES_SECRET_KEY; rotate it there".into())
        })?;
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| VaultError::Key(e.to_string()))?,
        );
        let (id, key) = new_key();
        let mut lines = vec![(id.clone(), key)];
        for l in text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        {
            if let Some((i, k)) = l.split_once(' ') {
                lines.push((i.to_string(), Zeroizing::new(k.to_string())));
            }
        }
        write_file(path, &lines)?;
        self.refresh()?;
        Ok(id)
    }

    /// Last step of a rotation: only the current key stays in the file.
    pub fn finish_rotation(&self) -> Result<(), VaultError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| VaultError::Key(e.to_string()))?,
        );
        let first = text
            .lines()
            .find(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .and_then(|l| l.split_once(' '))
            .map(|(i, k)| (i.to_string(), Zeroizing::new(k.to_string())))
            .ok_or_else(|| VaultError::Key("the key file has no key".into()))?;
        write_file(path, &[first])?;
        self.refresh()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Binding<'static> = Binding {
        org: "o1",
        connection: "conn_a",
        provider: "openai",
    };

    #[test]
    fn sealed_values_open_only_in_their_own_row_and_survive_a_rotation() {
        let d = tempfile::tempdir().unwrap();
        let v = Vault::open(d.path(), None).unwrap();
        let mode = std::fs::metadata(d.path().join("secret.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let s = v.seal(&B, b"sk-live-123").unwrap();
        assert!(!s.blob.windows(11).any(|w| w == b"sk-live-123"));
        assert_eq!(&v.open_sealed(&B, &s).unwrap()[..], b"sk-live-123");
        let other = Binding {
            connection: "conn_b",
            ..B
        };
        assert!(v.open_sealed(&other, &s).is_err());
        let mut bad = s.clone();
        *bad.blob.last_mut().unwrap() ^= 1;
        assert!(v.open_sealed(&B, &bad).is_err());

        // Another process (a second vault on the same file) rotates: the first opens both.
        let other_proc = Vault::open(d.path(), None).unwrap();
        let new = other_proc.begin_rotation().unwrap();
        let s2 = v.seal(&B, b"x").unwrap();
        assert_eq!(
            s2.key_id, new,
            "a running server seals with the new key at once"
        );
        assert_eq!(&v.open_sealed(&B, &s).unwrap()[..], b"sk-live-123");
        other_proc.finish_rotation().unwrap();
        assert!(v.open_sealed(&B, &s).is_err(), "the old key is gone");
        assert_eq!(&v.open_sealed(&B, &s2).unwrap()[..], b"x");
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let d = tempfile::tempdir().unwrap();
        Vault::open(d.path(), None).unwrap();
        let p = d.path().join("secret.key");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Vault::open(d.path(), None).is_err());
        let env = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let v = Vault::open(d.path(), Some(env.into())).unwrap();
        assert_eq!(v.current_key(), "env");
        assert!(Vault::open(d.path(), Some("short".to_string().into())).is_err());
    }
}
