//! Values kept sealed at rest (ChaCha20-Poly1305) under a key in a file of its own, outside
//! the database: a copy of `shisa.db` (a backup, a stray read) holds no runner token and no
//! container environment value in clear text.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

/// A 32-byte key, read from `path` or created there (0600) on first use. A key file that
/// group or others can read is refused, as ssh refuses such a private key.
pub fn key(path: &Path) -> anyhow::Result<[u8; 32]> {
    if let Ok(b) = std::fs::read(path) {
        crate::config::secret::check_private(path).map_err(|e| anyhow::anyhow!(e))?;
        anyhow::ensure!(b.len() == 32, "{} is not a 32-byte key", path.display());
        let mut k = [0u8; 32];
        k.copy_from_slice(&b);
        return Ok(k);
    }
    let mut k = [0u8; 32];
    random(&mut k)?;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(&k)?;
    Ok(k)
}

fn random(buf: &mut [u8]) -> anyhow::Result<()> {
    getrandom::fill(buf).map_err(|e| anyhow::anyhow!("random: {e}"))
}

/// nonce ‖ ciphertext.
pub fn seal(key: &[u8; 32], plain: &str) -> anyhow::Result<Vec<u8>> {
    let mut nonce = [0u8; 12];
    random(&mut nonce)?;
    let c = ChaCha20Poly1305::new(&Key::from(*key));
    let mut out = nonce.to_vec();
    out.extend(
        c.encrypt(&Nonce::from(nonce), plain.as_bytes())
            .map_err(|_| anyhow::anyhow!("sealing failed"))?,
    );
    Ok(out)
}

pub fn open(key: &[u8; 32], sealed: &[u8]) -> anyhow::Result<String> {
    anyhow::ensure!(sealed.len() > 12, "the sealed value is too short");
    let c = ChaCha20Poly1305::new(&Key::from(*key));
    let nonce: [u8; 12] = sealed[..12].try_into()?;
    let plain = c
        .decrypt(&Nonce::from(nonce), &sealed[12..])
        .map_err(|_| anyhow::anyhow!("the sealed value does not open with this key"))?;
    Ok(String::from_utf8(plain)?)
}

const TEXT: &str = "sealed:v1:";

/// A sealed value as text (for JSON columns): `sealed:v1:BASE64`.
pub fn seal_text(key: &[u8; 32], plain: &str) -> anyhow::Result<String> {
    Ok(format!(
        "{TEXT}{}",
        base64::engine::general_purpose::STANDARD.encode(seal(key, plain)?)
    ))
}

/// The value of `seal_text`; text written before sealing (no prefix) is returned as it is.
pub fn open_text(key: &[u8; 32], text: &str) -> anyhow::Result<String> {
    match text.strip_prefix(TEXT) {
        None => Ok(text.to_string()),
        Some(b) => open(key, &base64::engine::general_purpose::STANDARD.decode(b)?),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sealed_text_opens_and_hides_the_value() {
        let k = [7u8; 32];
        let s = super::seal_text(&k, "hunter2").unwrap();
        assert!(s.starts_with("sealed:v1:") && !s.contains("hunter2"));
        assert_eq!(super::open_text(&k, &s).unwrap(), "hunter2");
        assert_eq!(super::open_text(&k, "plain").unwrap(), "plain");
        assert!(super::open_text(&[8u8; 32], &s).is_err());
    }
}
