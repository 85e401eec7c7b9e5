//! Secrets at rest and API keys.
//!
//! Users' third-party secrets (Twilio auth tokens, OpenAI keys…) are sealed with AES-256-GCM
//! under the operator's `SECRETS_KEY` and shown back only masked. API keys are random 256-bit
//! strings with a `vk_` prefix that secret scanners can match; only their SHA-256 is stored, which
//! is enough for keys of that entropy and costs microseconds to check.

use std::fs;
use std::io::Write;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::distributions::Alphanumeric;
use rand::{Rng, RngCore};
use sha2::{Digest, Sha256};

/// The first byte of every sealed value, so that the format can change later.
const SEALED_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const KEY_FILE: &str = "secrets.key";

/// API keys start with this, so that leaked keys are recognizable.
pub const API_KEY_PREFIX: &str = "vk_";
/// How many characters of a key are kept in the clear to tell keys apart in listings.
const API_KEY_DISPLAY_LEN: usize = 10;

pub struct SecretBox {
    cipher: Aes256Gcm,
    /// For deriving other keys of this installation (never used to encrypt directly).
    root: [u8; 32],
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    pub fn new(key: &[u8; 32]) -> Self {
        SecretBox { cipher: Aes256Gcm::new(key.into()), root: *key }
    }

    /// The operator's key from `SECRETS_KEY`; otherwise, in embedded mode, the key generated
    /// once into the data folder.
    pub fn load(configured: Option<&str>, data_dir: Option<&Path>) -> anyhow::Result<Self> {
        if let Some(text) = configured {
            return Ok(SecretBox::new(&parse_key(text)?));
        }
        let Some(dir) = data_dir else {
            bail!("SECRETS_KEY is required with this database: set it to 32 random bytes as 64 hex characters (for example the output of `openssl rand -hex 32`)");
        };
        let path = dir.join(KEY_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(SecretBox::new(
                &parse_key(text.trim()).with_context(|| format!("the secrets key in {} is damaged", path.display()))?,
            )),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::thread_rng().fill_bytes(&mut key);
                fs::create_dir_all(dir).with_context(|| format!("cannot create the data folder {}", dir.display()))?;
                write_private(&path, hex::encode(key).as_bytes())
                    .with_context(|| format!("cannot write the secrets key to {}", path.display()))?;
                tracing::info!(path = %path.display(), "generated a secrets key for the embedded database");
                Ok(SecretBox::new(&key))
            }
            Err(err) => Err(err).with_context(|| format!("cannot read the secrets key {}", path.display())),
        }
    }

    /// A key of this installation for one purpose, stable across restarts (HMAC-SHA256 of the
    /// purpose under the secrets key).
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.root).expect("HMAC takes any key length");
        mac.update(b"vocode-server/");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }

    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext)
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        out.push(SEALED_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    pub fn open(&self, sealed: &[u8]) -> anyhow::Result<Vec<u8>> {
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != SEALED_VERSION {
            bail!("a sealed secret has an unknown format");
        }
        let (nonce, ciphertext) = sealed[1..].split_at(NONCE_LEN);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), ciphertext)
            .map_err(|_| anyhow!("a stored secret cannot be decrypted: is SECRETS_KEY the key it was written with?"))
    }
}

fn parse_key(text: &str) -> anyhow::Result<[u8; 32]> {
    let text = text.trim();
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text)?
    } else {
        STANDARD
            .decode(text)
            .or_else(|_| URL_SAFE_NO_PAD.decode(text))
            .map_err(|_| anyhow!("SECRETS_KEY must be 32 bytes written as 64 hex characters or as base64"))?
    };
    bytes.try_into().map_err(|_| anyhow!("SECRETS_KEY must be exactly 32 bytes (64 hex characters)"))
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// How a secret is shown back: its last four characters, the rest hidden.
pub fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() <= 8 {
        return "********".to_owned();
    }
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("********{tail}")
}

/// A freshly generated API key: the full key (shown once), what is kept of it, and its hash.
pub struct NewApiKey {
    pub key: String,
    pub display: String,
    pub hash: Vec<u8>,
}

pub fn generate_api_key() -> NewApiKey {
    let body: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(43) // 43 base-62 characters carry 256 bits
        .map(char::from)
        .collect();
    let key = format!("{API_KEY_PREFIX}{body}");
    NewApiKey { display: display_prefix(&key), hash: hash_api_key(&key), key }
}

pub fn hash_api_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// The part of a key that may be shown and logged.
pub fn display_prefix(key: &str) -> String {
    key.chars().take(API_KEY_DISPLAY_LEN).collect()
}

/// A random secret for signing, as base64 of 32 bytes (the form external actions use).
/// Compares secrets (signatures, tokens) in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn random_signing_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open_round_trip_and_detect_tampering() {
        let b = SecretBox::new(&[7u8; 32]);
        let sealed = b.seal(b"auth-token-1234");
        assert_ne!(&sealed[1 + NONCE_LEN..], b"auth-token-1234");
        assert_eq!(b.open(&sealed).unwrap(), b"auth-token-1234");
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(b.open(&tampered).is_err());
        assert!(SecretBox::new(&[8u8; 32]).open(&sealed).is_err());
    }

    #[test]
    fn derived_keys_are_stable_and_distinct() {
        let b = SecretBox::new(&[7u8; 32]);
        assert_eq!(b.derive("a"), SecretBox::new(&[7u8; 32]).derive("a"));
        assert_ne!(b.derive("a"), b.derive("b"));
        assert_ne!(b.derive("a"), SecretBox::new(&[8u8; 32]).derive("a"));
    }

    #[test]
    fn keys_parse_from_hex_or_base64() {
        let hex_key = "00".repeat(31) + "01";
        assert_eq!(parse_key(&hex_key).unwrap()[31], 1);
        let b64 = STANDARD.encode([2u8; 32]);
        assert_eq!(parse_key(&b64).unwrap(), [2u8; 32]);
        assert!(parse_key("short").is_err());
        assert!(parse_key(&STANDARD.encode([2u8; 16])).is_err());
    }

    #[test]
    fn masks_keep_only_the_tail() {
        assert_eq!(mask("sk-abcdefghijc0de"), "********c0de");
        assert_eq!(mask("tiny"), "********");
    }

    #[test]
    fn api_keys_are_prefixed_and_distinct() {
        let a = generate_api_key();
        let b = generate_api_key();
        assert!(a.key.starts_with("vk_"));
        assert_eq!(a.key.len(), 46);
        assert_ne!(a.key, b.key);
        assert_eq!(a.hash, hash_api_key(&a.key));
        assert!(a.key.starts_with(&a.display));
    }

    #[test]
    fn generated_key_file_is_reused() {
        let dir = std::env::temp_dir().join(format!("vocode-key-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&dir).unwrap();
        let first = SecretBox::load(None, Some(&dir)).unwrap();
        let sealed = first.seal(b"x");
        let second = SecretBox::load(None, Some(&dir)).unwrap();
        assert_eq!(second.open(&sealed).unwrap(), b"x");
        assert!(SecretBox::load(None, None).is_err());
        fs::remove_dir_all(dir).unwrap();
    }
}
