//! The Singularity Image Format (SIF): a native writer and a bounds-checked
//! reader, per shared/docs/sif-format.md (layout checked against Sylabs'
//! `siftool`). Little-endian, packed: a 128-byte header, a table of 585-byte
//! descriptors at 4096, then the data objects (partitions 4096-aligned).
//!
//! The reader treats its input as untrusted: every offset and size is checked
//! against the file before use, and nothing in it can make it allocate more
//! than the file's own size.

use std::io::{Read, Seek, SeekFrom, Write};

pub mod acl;
pub mod convert;
pub mod squash;
pub mod store;

pub const MAGIC: &[u8; 10] = b"SIF_MAGIC\0";
pub const VERSION: &[u8; 3] = b"01\0";
pub const LAUNCH: &str = "#!/usr/bin/env run-singularity\n";
pub const HEADER_LEN: usize = 128;
pub const DESCRIPTOR_LEN: usize = 585;
pub const DESCRIPTORS_OFFSET: u64 = 4096;
pub const DEFAULT_CAPACITY: u64 = 48;
const GROUP_MASK: u32 = 0xF000_0000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum DataType {
    Deffile = 0x4001,
    EnvVar = 0x4002,
    Labels = 0x4003,
    Partition = 0x4004,
    Signature = 0x4005,
    GenericJson = 0x4006,
    Generic = 0x4007,
    CryptoMessage = 0x4008,
    Sbom = 0x4009,
    OciRootIndex = 0x400A,
    OciBlob = 0x400B,
}

impl DataType {
    pub fn from_i32(v: i32) -> Option<DataType> {
        use DataType::*;
        Some(match v {
            0x4001 => Deffile,
            0x4002 => EnvVar,
            0x4003 => Labels,
            0x4004 => Partition,
            0x4005 => Signature,
            0x4006 => GenericJson,
            0x4007 => Generic,
            0x4008 => CryptoMessage,
            0x4009 => Sbom,
            0x400A => OciRootIndex,
            0x400B => OciBlob,
            _ => return None,
        })
    }
}

/// Filesystem 1 = Squashfs; partition 2 = primary system; arch "02" = amd64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionInfo {
    pub fs_type: i32,
    pub part_type: i32,
    pub arch: [u8; 2],
}

pub const FS_SQUASHFS: i32 = 1;
pub const PART_SYSTEM: i32 = 1;
pub const PART_PRIMSYS: i32 = 2;

/// SIF arch code for a Go/OCI architecture name.
pub fn arch_code(goarch: &str) -> [u8; 2] {
    let c = match goarch {
        "386" => "01",
        "amd64" => "02",
        "arm" => "03",
        "arm64" => "04",
        "ppc64" => "05",
        "ppc64le" => "06",
        "mips" => "07",
        "mipsle" => "08",
        "mips64" => "09",
        "mips64le" => "10",
        "s390x" => "11",
        "riscv64" => "12",
        "loong64" => "13",
        _ => "00",
    };
    [c.as_bytes()[0], c.as_bytes()[1]]
}

/// An object to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub data_type: DataType,
    pub name: String,
    /// Group 1 by default; `None` = no group.
    pub group: Option<u32>,
    pub link: u32,
    pub partition: Option<PartitionInfo>,
    /// Raw `Extra` for types other than partitions (e.g. an OCI digest).
    pub extra: Vec<u8>,
    pub data: Vec<u8>,
}

impl Object {
    pub fn new(data_type: DataType, name: &str, data: Vec<u8>) -> Object {
        Object {
            data_type,
            name: name.into(),
            group: Some(1),
            link: 0,
            partition: None,
            extra: Vec::new(),
            data,
        }
    }

    pub fn squashfs(data: Vec<u8>, goarch: &str) -> Object {
        Object {
            partition: Some(PartitionInfo {
                fs_type: FS_SQUASHFS,
                part_type: PART_PRIMSYS,
                arch: arch_code(goarch),
            }),
            ..Object::new(DataType::Partition, "", data)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SifError {
    #[error("not a SIF file: {0}")]
    Invalid(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn invalid(s: impl Into<String>) -> SifError {
    SifError::Invalid(s.into())
}

/// Options for a deterministic file (tests, content addressing).
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// Unix time for all timestamps; `None`: now.
    pub time: Option<i64>,
    /// The image UUID; `None`: random.
    pub id: Option<[u8; 16]>,
}

fn put_name(buf: &mut [u8], s: &str) {
    let b = s.as_bytes();
    let n = b.len().min(buf.len() - 1);
    buf[..n].copy_from_slice(&b[..n]);
}

/// Where a streamed object goes: its data are copied from a reader.
pub struct StreamObject<'a> {
    pub object: Object,
    pub reader: Box<dyn Read + 'a>,
}

/// Write a SIF to `out` (which must be seekable: the header and descriptors
/// are written last, once sizes are known, so payloads can be streamed).
pub fn write<W: Write + Seek>(
    out: &mut W,
    objects: Vec<StreamObject<'_>>,
    opts: &WriteOptions,
) -> Result<u64, SifError> {
    let capacity = DEFAULT_CAPACITY.max(objects.len() as u64);
    let data_offset = DESCRIPTORS_OFFSET + capacity * DESCRIPTOR_LEN as u64;
    if objects
        .iter()
        .filter(|o| {
            o.object
                .partition
                .is_some_and(|p| p.part_type == PART_PRIMSYS)
        })
        .count()
        > 1
    {
        return Err(invalid("more than one primary partition"));
    }
    let now = opts.time.unwrap_or_else(crate::store::now);
    let mut cur = data_offset;
    let mut descriptors = vec![0u8; capacity as usize * DESCRIPTOR_LEN];
    let mut arch = *b"00";
    for (i, mut so) in objects.into_iter().enumerate() {
        let o = &so.object;
        let align = if o.data_type == DataType::Partition {
            4096
        } else {
            1
        };
        let off = cur.div_ceil(align) * align;
        out.seek(SeekFrom::Start(off))?;
        let size = std::io::copy(&mut so.reader, out)?;
        let d = &mut descriptors[i * DESCRIPTOR_LEN..(i + 1) * DESCRIPTOR_LEN];
        d[0..4].copy_from_slice(&(o.data_type as i32).to_le_bytes());
        d[4] = 1;
        d[5..9].copy_from_slice(&(i as u32 + 1).to_le_bytes());
        d[9..13].copy_from_slice(&(o.group.unwrap_or(0) | GROUP_MASK).to_le_bytes());
        d[13..17].copy_from_slice(&o.link.to_le_bytes());
        d[17..25].copy_from_slice(&(off as i64).to_le_bytes());
        d[25..33].copy_from_slice(&(size as i64).to_le_bytes());
        d[33..41].copy_from_slice(&((off - cur + size) as i64).to_le_bytes());
        d[41..49].copy_from_slice(&now.to_le_bytes());
        d[49..57].copy_from_slice(&now.to_le_bytes());
        put_name(&mut d[73..201], &o.name);
        let extra = &mut d[201..585];
        if let Some(p) = o.partition {
            extra[0..4].copy_from_slice(&p.fs_type.to_le_bytes());
            extra[4..8].copy_from_slice(&p.part_type.to_le_bytes());
            extra[8..10].copy_from_slice(&p.arch);
            if p.part_type == PART_PRIMSYS {
                arch = p.arch;
            }
        } else {
            let n = o.extra.len().min(extra.len());
            extra[..n].copy_from_slice(&o.extra[..n]);
        }
        cur = off + size;
    }
    // An empty object at an aligned offset writes nothing: the file must still reach `cur`.
    let end = out.seek(SeekFrom::End(0))?;
    if end < cur {
        out.write_all(&vec![0u8; (cur - end) as usize])?;
    }
    let used = descriptors
        .chunks(DESCRIPTOR_LEN)
        .filter(|d| d[4] == 1)
        .count() as u64;
    let mut h = [0u8; HEADER_LEN];
    put_name(&mut h[0..32], LAUNCH);
    h[32..42].copy_from_slice(MAGIC);
    h[42..45].copy_from_slice(VERSION);
    h[45..47].copy_from_slice(&arch);
    let id = opts.id.unwrap_or_else(|| *uuid::Uuid::new_v4().as_bytes());
    h[48..64].copy_from_slice(&id);
    h[64..72].copy_from_slice(&now.to_le_bytes());
    h[72..80].copy_from_slice(&now.to_le_bytes());
    h[80..88].copy_from_slice(&((capacity - used) as i64).to_le_bytes());
    h[88..96].copy_from_slice(&(capacity as i64).to_le_bytes());
    h[96..104].copy_from_slice(&(DESCRIPTORS_OFFSET as i64).to_le_bytes());
    h[104..112].copy_from_slice(&((capacity as usize * DESCRIPTOR_LEN) as i64).to_le_bytes());
    h[112..120].copy_from_slice(&(data_offset as i64).to_le_bytes());
    h[120..128].copy_from_slice(&((cur - data_offset) as i64).to_le_bytes());
    out.seek(SeekFrom::Start(0))?;
    out.write_all(&h)?;
    out.write_all(&vec![0u8; DESCRIPTORS_OFFSET as usize - HEADER_LEN])?;
    out.write_all(&descriptors)?;
    out.flush()?;
    Ok(cur)
}

/// A descriptor as read.
#[derive(Debug, Clone, PartialEq)]
pub struct Descriptor {
    pub data_type: DataType,
    pub id: u32,
    pub group: Option<u32>,
    pub link: u32,
    pub offset: u64,
    pub size: u64,
    pub name: String,
    pub partition: Option<PartitionInfo>,
    pub extra: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sif {
    pub arch: [u8; 2],
    pub id: [u8; 16],
    pub created_at: i64,
    pub descriptors: Vec<Descriptor>,
    pub data_offset: u64,
    pub data_size: u64,
}

fn le_i64(b: &[u8]) -> i64 {
    i64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]))
}
fn le_i32(b: &[u8]) -> i32 {
    i32::from_le_bytes(b[..4].try_into().unwrap_or([0; 4]))
}
fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().unwrap_or([0; 4]))
}
fn cstr(b: &[u8]) -> Result<String, SifError> {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8(b[..end].to_vec()).map_err(|_| invalid("a name is not UTF-8"))
}

impl Sif {
    /// Read and check a SIF from anything seekable of length `len`.
    pub fn read<R: Read + Seek>(r: &mut R, len: u64) -> Result<Sif, SifError> {
        if len < HEADER_LEN as u64 {
            return Err(invalid("shorter than a header"));
        }
        let mut h = [0u8; HEADER_LEN];
        r.seek(SeekFrom::Start(0))?;
        r.read_exact(&mut h)?;
        if &h[32..42] != MAGIC {
            return Err(invalid("no SIF magic"));
        }
        if &h[42..45] != VERSION {
            return Err(invalid("unsupported SIF version"));
        }
        let total = le_i64(&h[88..]);
        let doff = le_i64(&h[96..]);
        let dsize = le_i64(&h[104..]);
        let data_offset = le_i64(&h[112..]);
        let data_size = le_i64(&h[120..]);
        if !(1..=65536).contains(&total)
            || doff < HEADER_LEN as i64
            || dsize != total * DESCRIPTOR_LEN as i64
        {
            return Err(invalid("descriptor table sizes do not agree"));
        }
        let (doff, dsize) = (doff as u64, dsize as u64);
        if doff.checked_add(dsize).is_none_or(|e| e > len) {
            return Err(invalid("descriptor table beyond the end of the file"));
        }
        if data_offset < 0
            || data_size < 0
            || (data_offset as u64)
                .checked_add(data_size as u64)
                .is_none_or(|e| e > len)
        {
            return Err(invalid("data beyond the end of the file"));
        }
        let mut table = vec![0u8; dsize as usize];
        r.seek(SeekFrom::Start(doff))?;
        r.read_exact(&mut table)?;
        let mut descriptors = Vec::new();
        let mut primaries = 0;
        for d in table.chunks(DESCRIPTOR_LEN) {
            if d[4] != 1 {
                continue;
            }
            let data_type =
                DataType::from_i32(le_i32(&d[0..])).ok_or_else(|| invalid("unknown data type"))?;
            let offset = le_i64(&d[17..]);
            let size = le_i64(&d[25..]);
            if offset < 0
                || size < 0
                || (offset as u64)
                    .checked_add(size as u64)
                    .is_none_or(|e| e > len)
            {
                return Err(invalid("an object lies beyond the end of the file"));
            }
            let group = le_u32(&d[9..]) & !GROUP_MASK;
            let extra = &d[201..585];
            let partition = (data_type == DataType::Partition).then(|| PartitionInfo {
                fs_type: le_i32(extra),
                part_type: le_i32(&extra[4..]),
                arch: [extra[8], extra[9]],
            });
            if partition.is_some_and(|p| p.part_type == PART_PRIMSYS) {
                primaries += 1;
            }
            descriptors.push(Descriptor {
                data_type,
                id: le_u32(&d[5..]),
                group: (group != 0).then_some(group),
                link: le_u32(&d[13..]),
                offset: offset as u64,
                size: size as u64,
                name: cstr(&d[73..201])?,
                partition,
                extra: extra.to_vec(),
            });
        }
        if primaries > 1 {
            return Err(invalid("more than one primary partition"));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&h[48..64]);
        Ok(Sif {
            arch: [h[45], h[46]],
            id,
            created_at: le_i64(&h[64..]),
            descriptors,
            data_offset: data_offset as u64,
            data_size: data_size as u64,
        })
    }

    pub fn primary(&self) -> Option<&Descriptor> {
        self.descriptors
            .iter()
            .find(|d| d.partition.is_some_and(|p| p.part_type == PART_PRIMSYS))
    }

    /// An object's bytes (bounded by the checks in `read`).
    pub fn data<R: Read + Seek>(&self, r: &mut R, d: &Descriptor) -> Result<Vec<u8>, SifError> {
        let mut v = vec![0u8; d.size as usize];
        r.seek(SeekFrom::Start(d.offset))?;
        r.read_exact(&mut v)?;
        Ok(v)
    }
}

/// Read from bytes (tests, fuzzing).
pub fn read_bytes(b: &[u8]) -> Result<Sif, SifError> {
    Sif::read(&mut std::io::Cursor::new(b), b.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn write_vec(objects: Vec<Object>) -> Vec<u8> {
        let mut c = std::io::Cursor::new(Vec::new());
        let so = objects
            .into_iter()
            .map(|o| StreamObject {
                reader: Box::new(std::io::Cursor::new(o.data.clone())),
                object: o,
            })
            .collect();
        write(
            &mut c,
            so,
            &WriteOptions {
                time: Some(1_700_000_000),
                id: Some([7; 16]),
            },
        )
        .unwrap();
        c.into_inner()
    }

    #[test]
    fn layout_matches_the_reference() {
        let b = write_vec(vec![
            Object::new(DataType::Deffile, "", vec![b'x'; 36]),
            Object::new(DataType::GenericJson, "oci-config.json", vec![b'{'; 21]),
            Object::squashfs(vec![1; 4096], "amd64"),
        ]);
        // The offsets of shared/docs/sif-format.md §2.7's example.
        let s = read_bytes(&b).unwrap();
        let pos: Vec<(u64, u64)> = s
            .descriptors
            .iter()
            .map(|d| (d.offset, d.offset + d.size))
            .collect();
        assert_eq!(pos, vec![(32176, 32212), (32212, 32233), (32768, 36864)]);
        assert_eq!(b.len(), 36864);
        assert_eq!(&s.arch, b"02");
        assert_eq!(s.primary().unwrap().id, 3);
        assert_eq!(s.descriptors[1].name, "oci-config.json");
    }

    #[test]
    fn hostile_inputs_are_refused() {
        let good = write_vec(vec![Object::squashfs(vec![1; 10], "amd64")]);
        assert!(read_bytes(&good[..100]).is_err());
        let mut b = good.clone();
        b[32] = b'X';
        assert!(read_bytes(&b).is_err());
        let mut b = good.clone();
        b[4096 + 25..4096 + 33].copy_from_slice(&i64::MAX.to_le_bytes());
        assert!(read_bytes(&b).is_err(), "an object size past the end");
        let mut b = good.clone();
        b[88..96].copy_from_slice(&(1i64 << 40).to_le_bytes());
        assert!(read_bytes(&b).is_err(), "a huge descriptor count");
    }

    fn arb_object() -> impl Strategy<Value = Object> {
        (
            prop_oneof![
                Just(DataType::Deffile),
                Just(DataType::GenericJson),
                Just(DataType::Labels),
                Just(DataType::Partition),
                Just(DataType::Generic)
            ],
            "[a-z.-]{0,40}",
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::option::of(1u32..5),
        )
            .prop_map(|(t, name, data, group)| {
                let mut o = Object::new(t, &name, data);
                o.group = group;
                if t == DataType::Partition {
                    o.partition = Some(PartitionInfo {
                        fs_type: FS_SQUASHFS,
                        part_type: PART_SYSTEM,
                        arch: arch_code("amd64"),
                    });
                }
                o
            })
    }

    proptest! {
        #[test]
        fn round_trip(objects in proptest::collection::vec(arb_object(), 0..8)) {
            let b = write_vec(objects.clone());
            let s = read_bytes(&b).unwrap();
            prop_assert_eq!(s.descriptors.len(), objects.len());
            for (d, o) in s.descriptors.iter().zip(&objects) {
                prop_assert_eq!(d.data_type, o.data_type);
                prop_assert_eq!(&d.name, &o.name);
                prop_assert_eq!(d.group, o.group);
                prop_assert_eq!(d.partition, o.partition);
                prop_assert_eq!(&s.data(&mut std::io::Cursor::new(&b), d).unwrap(), &o.data);
                if o.data_type == DataType::Partition {
                    prop_assert_eq!(d.offset % 4096, 0);
                }
            }
        }

        #[test]
        fn reader_never_panics(b in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let _ = read_bytes(&b);
        }
    }
}
