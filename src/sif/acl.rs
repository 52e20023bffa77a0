//! Who may read a converted SIF: the file is `0640` (group root) and each
//! reader gets a named-user POSIX ACL entry. A content file is shared by
//! everyone whose image has that digest; the store records why each reader may
//! read it (the repository it came through), so unsharing rewrites the ACL from
//! the claims left (a running job keeps the file it has open).
//!
//! Written as the `system.posix_acl_access` extended attribute directly: the
//! format is fixed by the kernel (include/uapi/linux/posix_acl_xattr.h), and
//! this avoids linking libacl or running `setfacl` for four fields.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const NAME: &[u8] = b"system.posix_acl_access\0";
const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const UNDEFINED_ID: u32 = u32::MAX;

/// Encode: owner rw, named users r, owning group none, mask r, others none.
pub fn encode(readers: &BTreeSet<u32>) -> Vec<u8> {
    let mut v = VERSION.to_le_bytes().to_vec();
    let mut entry = |tag: u16, perm: u16, id: u32| {
        v.extend(tag.to_le_bytes());
        v.extend(perm.to_le_bytes());
        v.extend(id.to_le_bytes());
    };
    entry(USER_OBJ, 6, UNDEFINED_ID);
    // Entries sorted by tag, then id, as the kernel requires; BTreeSet is sorted.
    for uid in readers {
        entry(USER, 4, *uid);
    }
    entry(GROUP_OBJ, 0, UNDEFINED_ID);
    entry(MASK, 4, UNDEFINED_ID);
    entry(OTHER, 0, UNDEFINED_ID);
    v
}

/// The named users of an encoded ACL; malformed input gives none.
pub fn decode_readers(b: &[u8]) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    if b.len() < 4 || u32::from_le_bytes([b[0], b[1], b[2], b[3]]) != VERSION {
        return out;
    }
    for e in b[4..].chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        if tag == USER {
            out.insert(id);
        }
    }
    out
}

fn c_path(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))
}

/// The file's current named readers.
pub fn readers(p: &Path) -> std::io::Result<BTreeSet<u32>> {
    let c = c_path(p)?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid NUL-terminated strings and a buffer of the length given.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            NAME.as_ptr().cast(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) => Ok(BTreeSet::new()),
            _ => Err(e),
        };
    }
    Ok(decode_readers(&buf[..n as usize]))
}

/// Add `uids` to the readers of `p` (mode becomes 0640 plus the ACL).
pub fn grant_read(p: &Path, uids: impl IntoIterator<Item = u32>) -> std::io::Result<()> {
    let mut all = readers(p)?;
    all.extend(uids);
    set_readers(p, &all)
}

/// Make `uids` exactly the named readers of `p` (a reader left out loses access to the file;
/// a process that has it open keeps reading).
pub fn set_readers(p: &Path, uids: &BTreeSet<u32>) -> std::io::Result<()> {
    let value = encode(uids);
    let c = c_path(p)?;
    // SAFETY: valid NUL-terminated strings and a buffer of the length given.
    let r = unsafe {
        libc::setxattr(
            c.as_ptr(),
            NAME.as_ptr().cast(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn readers_round_trip(uids in proptest::collection::btree_set(any::<u32>(), 0..20)) {
            prop_assert_eq!(decode_readers(&encode(&uids)), uids);
        }

        #[test]
        fn decoding_garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = decode_readers(&b);
        }
    }

    #[test]
    fn the_kernel_takes_it_and_getfacl_would_show_it() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("x.sif");
        std::fs::write(&f, b"x").unwrap();
        grant_read(&f, [1001]).unwrap();
        grant_read(&f, [1002]).unwrap();
        assert_eq!(readers(&f).unwrap(), BTreeSet::from([1001, 1002]));
        use std::os::unix::fs::PermissionsExt;
        // With an ACL, the group bits show the mask (r) and others have nothing.
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "mode {mode:o}");
    }
}
