//! Reading a `.safetensors` file from bytes: an 8-byte little-endian header length, a
//! JSON header `{name: {"dtype", "shape", "data_offsets": [begin, end]}, ...}`, then the
//! raw little-endian tensor data. Only `F32` tensors are read (all that MiniLM needs).

use super::EmbedError;
use serde::Deserialize;
use std::collections::HashMap;

#[derive(Deserialize)]
struct Info {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

/// A parsed safetensors file borrowing its bytes.
pub struct SafeTensors<'a> {
    tensors: HashMap<String, Info>,
    data: &'a [u8],
}

impl<'a> SafeTensors<'a> {
    /// Parses the header.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, EmbedError> {
        let len = bytes
            .get(..8)
            .map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                u64::from_le_bytes(a)
            })
            .ok_or(EmbedError::Format(
                "safetensors: shorter than its header length",
            ))?;
        let len = usize::try_from(len)
            .map_err(|_| EmbedError::Format("safetensors: header too large"))?;
        let end = 8usize
            .checked_add(len)
            .filter(|&e| e <= bytes.len())
            .ok_or(EmbedError::Format("safetensors: header runs past the end"))?;
        let raw: HashMap<String, serde_json::Value> = serde_json::from_slice(&bytes[8..end])
            .map_err(|_| EmbedError::Format("safetensors: header is not JSON"))?;
        let mut tensors = HashMap::new();
        for (name, v) in raw {
            if name == "__metadata__" {
                continue;
            }
            let info: Info = serde_json::from_value(v)
                .map_err(|_| EmbedError::Format("safetensors: bad tensor entry"))?;
            tensors.insert(name, info);
        }
        Ok(Self {
            tensors,
            data: &bytes[end..],
        })
    }

    /// The `F32` tensor `name` with exactly `shape`, as a vector.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, EmbedError> {
        let err = |m| EmbedError::Tensor(name.to_string(), m);
        let info = self.tensors.get(name).ok_or_else(|| err("missing"))?;
        if info.dtype != "F32" {
            return Err(err("not F32"));
        }
        if info.shape != shape {
            return Err(err("unexpected shape"));
        }
        let [b, e] = info.data_offsets;
        let n: usize = shape.iter().product();
        if e < b || e - b != n * 4 {
            return Err(err("data size does not match its shape"));
        }
        let raw = self
            .data
            .get(b..e)
            .ok_or_else(|| err("data runs past the end"))?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}
