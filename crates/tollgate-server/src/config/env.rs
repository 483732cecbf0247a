//! `TOLLGATE__SECTION__KEY=value` environment overrides, applied to the parsed TOML
//! document before it is deserialised.

use std::collections::HashMap;

use super::ConfigErrors;

const ENV_PREFIX: &str = "TOLLGATE__";

/// Apply `TOLLGATE__A__B=value` as `a.b = value` (numeric segments index arrays; values
/// parse as TOML scalars when they can, else are strings).
pub(super) fn apply_env(
    doc: &mut toml::Table,
    env: &HashMap<String, String>,
) -> Result<(), ConfigErrors> {
    let mut errs = Vec::new();
    let mut vars: Vec<_> = env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (k, v) in vars {
        let path: Vec<String> = k[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            errs.push(format!("{k}: empty path segment"));
            continue;
        }
        let value = parse_env_value(v);
        if let Err(e) = set_path(doc, &path, value) {
            errs.push(format!("{k}: {e}"));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errs))
    }
}

fn parse_env_value(v: &str) -> toml::Value {
    let doc = format!("v = {v}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(v.to_string())),
        Err(_) => toml::Value::String(v.to_string()),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (head, rest) = path.split_first().ok_or("empty path")?;
    if rest.is_empty() {
        table.insert(head.clone(), value);
        return Ok(());
    }
    let entry = table
        .entry(head.clone())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    set_in_value(entry, rest, value)
}

fn set_in_value(node: &mut toml::Value, path: &[String], value: toml::Value) -> Result<(), String> {
    match node {
        toml::Value::Table(t) => set_path(t, path, value),
        toml::Value::Array(items) => {
            let (head, rest) = path.split_first().ok_or("empty path")?;
            let idx: usize = head
                .parse()
                .map_err(|_| format!("{head:?} is not an array index"))?;
            let slot = items
                .get_mut(idx)
                .ok_or_else(|| format!("index {idx} is past the end of the array"))?;
            if rest.is_empty() {
                *slot = value;
                Ok(())
            } else {
                set_in_value(slot, rest, value)
            }
        }
        _ => Err("cannot set a field inside a scalar".into()),
    }
}
