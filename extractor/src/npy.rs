//! Minimal .npy / .npz writing and reading (little-endian f32 and bool, C order): enough for
//! `export` and `import` without a numpy dependency.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::{Read, Write};

pub enum NpyData {
    F32(Vec<f32>),
    Bool(Vec<bool>),
    I64(Vec<i64>),
}

pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: NpyData,
}

pub fn encode_npy(a: &NpyArray) -> Vec<u8> {
    let descr = match a.data {
        NpyData::F32(_) => "<f4",
        NpyData::Bool(_) => "|b1",
        NpyData::I64(_) => "<i8",
    };
    let shape = match a.shape.len() {
        1 => format!("({},)", a.shape[0]),
        _ => format!(
            "({})",
            a.shape
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so that magic(6)+version(2)+len(2)+header is a multiple of 64, ending in '\n'.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::new();
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    match &a.data {
        NpyData::F32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        NpyData::Bool(v) => v.iter().for_each(|&x| out.push(x as u8)),
        NpyData::I64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
    }
    out
}

pub fn decode_npy(bytes: &[u8], what: &str) -> Result<NpyArray> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("{what}: not a .npy array (bad magic)");
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                bail!("{what}: truncated .npy header");
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => bail!("{what}: unsupported .npy version {v}"),
    };
    let header = bytes
        .get(start..start + hlen)
        .with_context(|| format!("{what}: truncated .npy header"))?;
    let header =
        std::str::from_utf8(header).with_context(|| format!("{what}: .npy header is not text"))?;
    let field = |key: &str| -> Result<String> {
        let i = header
            .find(key)
            .with_context(|| format!("{what}: .npy header lacks {key}"))?;
        Ok(header[i + key.len()..]
            .trim_start_matches([':', ' ', '\''])
            .to_string())
    };
    let descr: String = field("'descr'")?
        .chars()
        .take_while(|&c| c != '\'')
        .collect();
    if field("'fortran_order'")?.starts_with("True") {
        bail!("{what}: Fortran-ordered arrays are not supported; save with np.ascontiguousarray");
    }
    let shape_s = field("'shape'")?;
    let inner: String = shape_s
        .trim_start_matches('(')
        .chars()
        .take_while(|&c| c != ')')
        .collect();
    let shape: Vec<usize> = inner
        .split(',')
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .with_context(|| format!("{what}: bad shape {shape_s}"))
        })
        .collect::<Result<_>>()?;
    let n: usize = shape.iter().product();
    let data = &bytes[start + hlen..];
    let need = |w: usize| -> Result<()> {
        if data.len() != n * w {
            bail!(
                "{what}: .npy data has {} bytes, shape {:?} needs {}",
                data.len(),
                shape,
                n * w
            );
        }
        Ok(())
    };
    let data = match descr.as_str() {
        "<f4" => {
            need(4)?;
            NpyData::F32(
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
        }
        "<f8" => {
            need(8)?;
            NpyData::F32(
                data.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8")) as f32)
                    .collect(),
            )
        }
        "<f2" => {
            need(2)?;
            NpyData::F32(
                data.chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            )
        }
        "|b1" => {
            need(1)?;
            NpyData::Bool(data.iter().map(|&b| b != 0).collect())
        }
        "<i8" => {
            need(8)?;
            NpyData::I64(
                data.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
                    .collect(),
            )
        }
        d => bail!("{what}: unsupported dtype {d} (use float32, float64, float16, bool or int64)"),
    };
    Ok(NpyArray { shape, data })
}

/// Writes an .npz (stored, uncompressed: byte-for-byte reproducible) with extra raw members.
pub fn write_npz(
    arrays: &BTreeMap<String, NpyArray>,
    extra: &[(&str, Vec<u8>)],
) -> Result<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .last_modified_time(zip::DateTime::default())
            .large_file(true);
        for (name, a) in arrays {
            z.start_file(format!("{name}.npy"), opts)?;
            z.write_all(&encode_npy(a))?;
        }
        for (name, bytes) in extra {
            z.start_file(name.to_string(), opts)?;
            z.write_all(bytes)?;
        }
        z.finish()?;
    }
    Ok(buf.into_inner())
}

/// Reads every member of an .npz: arrays by name (without `.npy`) and other members raw.
pub fn read_npz(
    bytes: &[u8],
    what: &str,
) -> Result<(BTreeMap<String, NpyArray>, BTreeMap<String, Vec<u8>>)> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .with_context(|| format!("{what}: not a zip/npz file"))?;
    let mut arrays = BTreeMap::new();
    let mut raw = BTreeMap::new();
    for i in 0..z.len() {
        let mut f = z.by_index(i)?;
        let name = f.name().to_string();
        let mut b = Vec::new();
        f.read_to_end(&mut b)
            .with_context(|| format!("{what}: reading member {name}"))?;
        if let Some(stem) = name.strip_suffix(".npy") {
            arrays.insert(stem.to_string(), decode_npy(&b, &format!("{what}:{name}"))?);
        } else {
            raw.insert(name, b);
        }
    }
    Ok((arrays, raw))
}
