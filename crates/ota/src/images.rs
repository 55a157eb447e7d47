//! Images stored content-addressed: `DIR/<sha256 hex>`, written to a
//! temporary name, flushed, renamed into place and the directory flushed,
//! so a crash leaves the complete image or none.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::{OtaError, VerifiedFirmware};

/// The path of the image with this SHA-256 (hex) under `dir`.
pub fn image_path(dir: &Path, sha256_hex: &str) -> PathBuf {
    dir.join(sha256_hex)
}

/// Stores the image of `firmware` under `dir` (created if absent); an
/// identical image already there is kept. Returns its path.
pub fn store_image(dir: &Path, firmware: &VerifiedFirmware) -> Result<PathBuf, OtaError> {
    fs::create_dir_all(dir).map_err(|e| OtaError::io("create", dir, e))?;
    let sha = &firmware.manifest().image_sha256;
    let path = image_path(dir, sha);
    if let Ok(existing) = fs::read(&path)
        && hex::encode(Sha256::digest(&existing)) == *sha
    {
        return Ok(path);
    }
    let temp = dir.join(format!(".{sha}.{:016x}.tmp", rand::rng().next_u64()));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&temp)
            .map_err(|e| OtaError::io("create", &temp, e))?;
        file.write_all(firmware.image())
            .and_then(|()| file.sync_all())
            .map_err(|e| OtaError::io("write", &temp, e))?;
        fs::rename(&temp, &path).map_err(|e| OtaError::io("rename into", &path, e))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| OtaError::io("flush", dir, e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SignRequest, SigningKey, sign, verify};

    #[test]
    fn stores_by_hash_and_keeps_identical_images() {
        let dir = tempfile::tempdir().expect("tempdir");
        let images = dir.path().join("firmware");
        let key = SigningKey::generate();
        let req = SignRequest {
            device_type: "sensor",
            version: "1.0.0",
            security_version: 1,
            created_at_ms: 0,
        };
        let b = sign(b"the image", &key, &req).expect("signs");
        let v = verify(b, &[key.public_key()], 1024, None).expect("verifies");
        let path = store_image(&images, &v).expect("stores");
        assert_eq!(path, images.join(hex::encode(Sha256::digest(b"the image"))));
        assert_eq!(fs::read(&path).expect("read"), b"the image");
        assert_eq!(store_image(&images, &v).expect("again"), path);
        let names: Vec<_> = fs::read_dir(&images).expect("dir").collect();
        assert_eq!(names.len(), 1, "no temporary files left");
    }
}
