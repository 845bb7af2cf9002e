//! Passwords: argon2id with OWASP's parameters (m = 19 MiB, t = 2, p = 1),
//! hashed on a few threads of their own (`limits::Workers`) with a bounded
//! line, so a burst of logins can neither starve the async workers nor grow
//! memory (each hash holds 19 MiB while it runs).

use crate::limits::Workers;
use argon2::password_hash::{rand_core::OsRng, Output, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use super::error::{Error, Result};

pub const MIN_PASSWORD_LEN: usize = 12;
pub const MAX_PASSWORD_LEN: usize = 256;

fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("OWASP argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

pub fn check_password_rules(pw: &str) -> std::result::Result<(), String> {
    let n = pw.chars().count();
    if n < MIN_PASSWORD_LEN {
        return Err(format!("a password needs at least {MIN_PASSWORD_LEN} characters"));
    }
    if n > MAX_PASSWORD_LEN {
        return Err(format!("a password has at most {MAX_PASSWORD_LEN} characters"));
    }
    Ok(())
}

fn hash_blocking(pw: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(pw.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::internal(format!("hashing a password: {e}")))
}

/// The most memory a stored hash may ask a check for (64 MiB): hashes are
/// ours, but a bad row must not make a check allocate without bound.
const MAX_BLOCKS: usize = 64 * 1024;

thread_local! {
    /// Each password thread's argon2 memory, kept between checks: a fixed
    /// 19 MiB per thread rather than a fresh allocation per check, which the
    /// allocator would keep resident a few times over.
    static BLOCKS: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Recompute the hash of `pw` with the stored hash's algorithm, version,
/// parameters and salt, and compare in constant time (`Output`'s `==`).
fn verify_blocking(pw: &str, stored: &str) -> bool {
    let check = || -> Option<bool> {
        let h = PasswordHash::new(stored).ok()?;
        let expected = h.hash?;
        let algorithm = Algorithm::try_from(h.algorithm).ok()?;
        let version = h.version.map(Version::try_from).transpose().ok()?.unwrap_or_default();
        let params = Params::try_from(&h).ok()?;
        if params.block_count() > MAX_BLOCKS {
            return None;
        }
        let mut salt = [0u8; 64];
        let salt = h.salt?.decode_b64(&mut salt).ok()?;
        let mut out = vec![0u8; expected.len()];
        BLOCKS.with(|blocks| {
            let mut blocks = blocks.borrow_mut();
            blocks.resize(params.block_count(), Block::default());
            Argon2::new(algorithm, version, params.clone())
                .hash_password_into_with_memory(pw.as_bytes(), salt, &mut out, &mut blocks[..params.block_count()])
                .ok()
        })?;
        Some(Output::new(&out).ok()? == expected)
    };
    check().unwrap_or(false)
}

/// A hash of a password nobody has, verified against when the user does not
/// exist so that "unknown user" takes as long as "wrong password".
fn decoy_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| hash_blocking("decoy-password-nobody-has").unwrap_or_default())
}

/// At most this many sign-in checks wait for a turn at once, beyond those
/// running; more are refused at once (never an unbounded wait).
const MAX_WAITING: usize = 32;

/// Places in the line of the lane for people already signed in.
const MAX_WAITING_SIGNED_IN: usize = 8;

/// Password work in two lanes, each a few threads (a check holds one core
/// for ~50 ms and 19 MiB) and a bounded line. Sign-in attempts come from
/// anyone and can be flooded from many addresses at once; the other lane
/// serves people already signed in (break-glass, an admin setting a
/// password), so a flood of sign-ins never stops an admin from breaking
/// the glass.
#[derive(Clone)]
pub struct Passwords {
    sign_in: Arc<Workers>,
    signed_in: Arc<Workers>,
}

impl Passwords {
    pub fn new(concurrency: usize) -> Self {
        Self {
            sign_in: Arc::new(Workers::new("argon2", concurrency, concurrency.max(1) + MAX_WAITING)),
            signed_in: Arc::new(Workers::new("argon2-signed-in", 1, 1 + MAX_WAITING_SIGNED_IN)),
        }
    }

    /// Hash a new password (set by a signed-in admin or the command line).
    pub async fn hash(&self, pw: String) -> Result<String> {
        self.signed_in.run(move || hash_blocking(&pw)).await?
    }

    /// A sign-in's check. `hash` None means the user does not exist: a decoy
    /// is checked instead. `RateLimited` when too many checks wait already.
    pub async fn verify(&self, pw: String, hash: Option<String>) -> Result<bool> {
        self.sign_in.run(move || verify_or_decoy(&pw, hash.as_deref())).await
    }

    /// A password typed again by someone signed in (break-glass), in the
    /// lane sign-in floods do not reach.
    pub async fn verify_signed_in(&self, pw: String, hash: String) -> Result<bool> {
        self.signed_in.run(move || verify_blocking(&pw, &hash)).await
    }
}

fn verify_or_decoy(pw: &str, hash: Option<&str>) -> bool {
    match hash {
        Some(h) => verify_blocking(pw, h),
        None => {
            verify_blocking(pw, decoy_hash());
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify_and_refuse_wrong() {
        let p = Passwords::new(2);
        let h = p.hash("correct horse battery".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(p.verify("correct horse battery".into(), Some(h.clone())).await.unwrap());
        assert!(!p.verify("wrong horse battery".into(), Some(h)).await.unwrap());
        assert!(!p.verify("anything at all".into(), None).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_line_is_refused_at_once_not_queued() {
        let p = Passwords::new(1);
        let h = p.hash("correct horse battery".into()).await.unwrap();
        let tasks: Vec<_> = (0..MAX_WAITING + 20)
            .map(|_| {
                let (p, h) = (p.clone(), h.clone());
                tokio::spawn(async move { p.verify("wrong horse battery".into(), Some(h)).await })
            })
            .collect();
        let mut refused = 0;
        for t in tasks {
            if matches!(t.await.unwrap(), Err(Error::RateLimited { .. })) {
                refused += 1;
            }
        }
        assert!(refused > 0, "beyond the line's length, checks are refused");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_sign_ins_leaves_the_signed_in_lane_free() {
        let p = Passwords::new(1);
        let h = p.hash("correct horse battery".into()).await.unwrap();
        let flood: Vec<_> = (0..MAX_WAITING + 20)
            .map(|_| {
                let (p, h) = (p.clone(), h.clone());
                tokio::spawn(async move { p.verify("wrong horse battery".into(), Some(h)).await })
            })
            .collect();
        // The sign-in line is full now: one more is refused at once...
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(matches!(
            p.verify("correct horse battery".into(), Some(h.clone())).await,
            Err(Error::RateLimited { .. })
        ));
        // ...while break-glass's check runs.
        assert!(p.verify_signed_in("correct horse battery".into(), h).await.unwrap());
        for t in flood {
            let _ = t.await.unwrap();
        }
    }

    #[test]
    fn a_hash_made_by_the_argon2_crate_verifies_and_a_changed_one_does_not() {
        let h = hash_blocking("correct horse battery").unwrap();
        assert!(verify_blocking("correct horse battery", &h));
        assert!(!verify_blocking("correct horse batterz", &h));
        // The standard verifier agrees with ours.
        use argon2::password_hash::PasswordVerifier;
        let parsed = PasswordHash::new(&h).unwrap();
        assert!(argon2().verify_password(b"correct horse battery", &parsed).is_ok());
        // A hash of other parameters (as an older policy would have made) too.
        let old = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8 * 1024, 1, 1, None).unwrap(),
        )
        .hash_password(b"another password here", &SaltString::generate(&mut OsRng))
        .unwrap()
        .to_string();
        assert!(verify_blocking("another password here", &old));
        assert!(!verify_blocking("another password herE", &old));
        // Anything else is a refusal, never a panic.
        for bad in [
            "",
            "$argon2id$",
            "$argon2id$v=19$m=99999999,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
            "plain",
        ] {
            assert!(!verify_blocking("x", bad), "{bad}");
        }
    }

    #[test]
    fn short_passwords_are_refused() {
        assert!(check_password_rules("short").is_err());
        assert!(check_password_rules("long enough pass").is_ok());
    }
}
