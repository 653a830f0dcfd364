//! Naming rules for sprites. Names end up in URLs and host names, so they follow DNS labels.

/// Longest accepted sprite name.
pub const MAX_NAME_LEN: usize = 63;

/// Checks a sprite name: lowercase letters, digits and dashes, 1 to 63 characters, not starting
/// or ending with a dash. Returns a readable reason on failure.
pub fn validate_sprite_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("sprite name must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "sprite name must be at most {MAX_NAME_LEN} characters"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "sprite name may only contain lowercase letters, digits and dashes (found {c:?})"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("sprite name must not start or end with a dash".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        for ok in ["a", "demo", "my-sprite-1", &"a".repeat(63)] {
            assert!(validate_sprite_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Demo",
            "a_b",
            "-a",
            "a-",
            "a.b",
            "é",
            &"a".repeat(64),
            "a b",
        ] {
            assert!(validate_sprite_name(bad).is_err(), "{bad}");
        }
    }
}
