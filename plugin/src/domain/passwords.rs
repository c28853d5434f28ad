//! Password hashing: argon2id, parameters from the settings.

use crate::config::Settings;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

fn hasher(settings: &Settings) -> Result<Argon2<'static>, String> {
    let params = Params::new(settings.argon2_memory_kib, settings.argon2_iterations, settings.argon2_parallelism, None)
        .map_err(|err| format!("invalid argon2 settings: {err}"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes `password` with a fresh random salt into a PHC string.
pub fn hash(password: &str, settings: &Settings) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|err| format!("no randomness: {err}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|err| err.to_string())?;
    hasher(settings)?
        .hash_password(password.as_bytes(), &salt)
        .map(|phc| phc.to_string())
        .map_err(|err| err.to_string())
}

/// Whether `password` matches `stored`. With no stored hash (unknown
/// login, account without password) it still spends one full hash with
/// the current parameters, so the answer takes the same time either way.
pub fn verify(password: &str, stored: Option<&str>, settings: &Settings) -> bool {
    let parsed = stored.and_then(|phc| PasswordHash::new(phc).ok());
    match parsed {
        Some(phc) => Argon2::default().verify_password(password.as_bytes(), &phc).is_ok(),
        None => {
            // A fixed salt is fine: this hash is thrown away.
            if let (Ok(argon), Ok(salt)) = (hasher(settings), SaltString::encode_b64(b"evogate-dummy-salt")) {
                let _ = std::hint::black_box(argon.hash_password(password.as_bytes(), &salt));
            }
            false
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Cheap parameters keep the unit tests fast; the real ones are measured in the benchmark.
    pub fn fast() -> Settings {
        Settings {
            argon2_memory_kib: 64,
            argon2_iterations: 1,
            ..Settings::read(&crate::config::MapConfig::default()).expect("defaults")
        }
    }

    #[test]
    fn a_hash_verifies_its_password_only() {
        let settings = fast();
        let stored = hash("correct horse", &settings).expect("hash");
        assert!(stored.starts_with("$argon2id$"));
        assert!(verify("correct horse", Some(&stored), &settings));
        assert!(!verify("correct horse!", Some(&stored), &settings));
        assert!(!verify("", Some(&stored), &settings));
        assert_ne!(stored, hash("correct horse", &settings).expect("hash"), "salted");
    }

    #[test]
    fn missing_or_garbled_hashes_never_verify() {
        let settings = fast();
        assert!(!verify("x", None, &settings));
        assert!(!verify("x", Some("not a phc string"), &settings));
    }

    #[test]
    fn bad_parameters_are_an_error_not_a_panic() {
        let settings = Settings { argon2_memory_kib: 1, ..fast() };
        assert!(hash("x", &settings).is_err());
    }
}
