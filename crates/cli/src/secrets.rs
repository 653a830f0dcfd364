//! Tokens in the system keyring (`sprite org keyring enable`): the Secret Service on the
//! session D-Bus (gnome-keyring, KWallet, KeePassXC), through the `keyring` crate. The kernel
//! keyring is not used: it forgets everything at a reboot, and a token lost that way is a
//! token the user must mint again. Where no keyring answers, tokens stay in the config file
//! and the command says why.

use anyhow::{anyhow, Result};

/// The keyring service every entry is filed under.
const SERVICE: &str = "sprites-cli";

/// The `keyring_key` of an org's token (recorded in the config file, as the docs show).
pub fn key(url: &str, org: &str) -> String {
    format!("{SERVICE}:{url}:{org}")
}

fn entry(key: &str) -> Result<keyring::Entry> {
    let user = key.strip_prefix(&format!("{SERVICE}:")).unwrap_or(key);
    keyring::Entry::new(SERVICE, user).map_err(explain)
}

fn explain(e: keyring::Error) -> anyhow::Error {
    match e {
        keyring::Error::NoStorageAccess(_) | keyring::Error::PlatformFailure(_) => anyhow!(
            "no system keyring answers here (it needs a Secret Service such as gnome-keyring on the session D-Bus): {e}"
        ),
        other => anyhow!("system keyring: {other}"),
    }
}

/// Stores a token and reads it back, so a keyring that drops writes is caught at once.
pub fn store(key: &str, token: &str) -> Result<()> {
    let e = entry(key)?;
    e.set_password(token).map_err(explain)?;
    match e.get_password() {
        Ok(t) if t == token => Ok(()),
        Ok(_) => Err(anyhow!(
            "the system keyring gave back another token than it was given"
        )),
        Err(err) => Err(explain(err)),
    }
}

/// The token stored under `key`.
pub fn load(key: &str) -> Result<String> {
    entry(key)?.get_password().map_err(|e| match e {
        keyring::Error::NoEntry => {
            anyhow!("the system keyring holds no token for {key} (log in again)")
        }
        other => explain(other),
    })
}

/// Removes the token under `key`; one that is not there is fine.
pub fn delete(key: &str) -> Result<()> {
    match entry(key)?.delete_credential() {
        Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
        Err(e) => Err(explain(e)),
    }
}
