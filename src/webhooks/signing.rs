//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.content">`,
//! keyed by the user's signing secret (`whsec_` + base64). Right after a rotation deliveries carry
//! two signatures, the new secret's and the old one's, so receivers can switch without losing any.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use uuid::Uuid;

use crate::crypto::SecretBox;
use crate::store::{now, users, Store};

pub const SECRET_PREFIX: &str = "whsec_";

/// How long the previous secret still signs after a rotation.
pub const ROTATION_OVERLAP: chrono::Duration = chrono::Duration::hours(24);

pub fn generate_secret() -> String {
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

fn key_of(secret: &str) -> Vec<u8> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    STANDARD.decode(encoded).unwrap_or_else(|_| encoded.as_bytes().to_vec())
}

/// One signature, `v1,<base64>`.
pub fn sign(secret: &str, id: &str, timestamp: i64, content: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key_of(secret)).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(content);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// Whether one of the space-separated signatures of a header is the secret's.
pub fn verify(secret: &str, id: &str, timestamp: i64, content: &[u8], header: &str) -> bool {
    let expected = sign(secret, id, timestamp, content);
    header.split(' ').any(|s| crate::crypto::constant_time_eq(s.as_bytes(), expected.as_bytes()))
}

/// The secrets a user's deliveries are signed with: the current one (made on first use) and,
/// for a day after a rotation, the previous one.
pub async fn signing_secrets(store: &Store, secrets: &SecretBox, user_id: Uuid) -> anyhow::Result<Vec<String>> {
    let current = read_or_create(store, secrets, user_id).await?;
    let mut handle = store.read().await?;
    let stored = users::webhook_secrets(handle.conn(), user_id).await?;
    let mut out = vec![current];
    if let Some(stored) = stored {
        if let (Some(previous), Some(rotated_at)) = (stored.previous, stored.rotated_at) {
            if now() - rotated_at < ROTATION_OVERLAP {
                out.push(String::from_utf8(secrets.open(&previous)?)?);
            }
        }
    }
    Ok(out)
}

/// The user's signing secret, created (once, whoever asks first) when there is none.
pub async fn read_or_create(store: &Store, secrets: &SecretBox, user_id: Uuid) -> anyhow::Result<String> {
    let mut handle = store.read().await?;
    if let Some(sealed) = users::webhook_secrets(handle.conn(), user_id).await?.and_then(|s| s.current) {
        return Ok(String::from_utf8(secrets.open(&sealed)?)?);
    }
    drop(handle);
    let mut tx = store.begin().await?;
    users::set_webhook_secret_if_absent(tx.conn(), user_id, &secrets.seal(generate_secret().as_bytes())).await?;
    let sealed = users::webhook_secrets(tx.conn(), user_id)
        .await?
        .and_then(|s| s.current)
        .ok_or_else(|| anyhow::anyhow!("no user {user_id}"))?;
    tx.commit().await?;
    Ok(String::from_utf8(secrets.open(&sealed)?)?)
}

/// Replaces the user's signing secret; the previous one keeps signing for a day.
pub async fn rotate(store: &Store, secrets: &SecretBox, user_id: Uuid) -> anyhow::Result<String> {
    read_or_create(store, secrets, user_id).await?;
    let secret = generate_secret();
    let mut tx = store.begin().await?;
    users::rotate_webhook_secret(tx.conn(), user_id, &secrets.seal(secret.as_bytes()), now()).await?;
    tx.commit().await?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn signatures_match_the_standard_webhooks_example() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(verify(
            secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
            &format!("v1,other {signature}")
        ));
        assert!(!verify(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265331, br#"{"test": 2432232314}"#, &signature));
    }

    #[test]
    fn generated_secrets_are_prefixed_and_distinct() {
        let (a, b) = (generate_secret(), generate_secret());
        assert!(a.starts_with(SECRET_PREFIX) && a != b);
        assert_eq!(key_of(&a).len(), 24);
    }
}
