//! `ROTATOR_<SECTION>_<KEY>` environment variables: which are read, and how they override the
//! file's keys.

use super::{Config, ConfigError};

/// Prefix of the environment variables that override config keys.
pub(super) const ENV_PREFIX: &str = "ROTATOR_";

/// Environment variables with this prefix belong to the test harness, not to the config.
pub(super) const ENV_TEST_PREFIX: &str = "ROTATOR_TEST_";

/// The `ROTATOR_*` variables of the process environment (but the test harness's
/// `ROTATOR_TEST_*`). Other variables are not read, so one that is not UTF-8 (a locale's file
/// name, say) cannot stop the program.
pub(super) fn rotator_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name
            .to_str()
            .filter(|n| n.starts_with(ENV_PREFIX) && !n.starts_with(ENV_TEST_PREFIX))
        else {
            continue;
        };
        let value = value.into_string().map_err(|raw| ConfigError::Env {
            var: name.to_string(),
            message: format!("{raw:?} is not valid UTF-8"),
        })?;
        vars.push((name.to_string(), value));
    }
    Ok(vars)
}

/// Applies `ROTATOR_<SECTION>_<KEY>` variables. The set of keys is read off the defaults, so every
/// key (and only a key) can be overridden; the default's type says how to parse the value.
/// Returns the `ROTATOR_*` variables that match no key (scripts use a few of their own), so the
/// caller can warn about likely typos.
pub(super) fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<String>, ConfigError> {
    let defaults = toml::Table::try_from(Config::default()).map_err(|e| ConfigError::Parse {
        path: "<defaults>".into(),
        message: e.to_string(),
    })?;
    let mut leaves = Vec::new();
    collect_leaves(&defaults, &mut Vec::new(), &mut leaves);
    let mut unknown = Vec::new();
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if var.starts_with(ENV_TEST_PREFIX) {
            continue;
        }
        let Some((path, default)) = leaves
            .iter()
            .find(|(p, _)| p.join("_").to_uppercase() == rest)
        else {
            unknown.push(var);
            continue;
        };
        let value = env_value(default, &raw).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
        insert_path(table, path, value).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
    }
    Ok(unknown)
}

fn collect_leaves(
    table: &toml::Table,
    prefix: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, toml::Value)>,
) {
    for (key, value) in table {
        prefix.push(key.clone());
        match value {
            toml::Value::Table(t) => collect_leaves(t, prefix, out),
            other => out.push((prefix.clone(), other.clone())),
        }
        prefix.pop();
    }
}

fn env_value(default: &toml::Value, raw: &str) -> Result<toml::Value, String> {
    Ok(match default {
        toml::Value::Integer(_) => toml::Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| format!("{raw:?} is not an integer"))?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(
            raw.trim()
                .parse()
                .map_err(|_| format!("{raw:?} is not true or false"))?,
        ),
        // A TOML array (`["a{1,3}", "b"]`) for values that contain commas themselves.
        toml::Value::Array(_) if raw.trim_start().starts_with('[') => {
            let wrapped: toml::Table = toml::from_str(&format!("v = {raw}")).map_err(|e| {
                format!(
                    "{raw:?} is not a TOML array: {}",
                    super::one_line(&e.to_string())
                )
            })?;
            match wrapped.get("v") {
                Some(array @ toml::Value::Array(_)) => array.clone(),
                _ => return Err(format!("{raw:?} is not a TOML array")),
            }
        }
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        _ => toml::Value::String(raw.to_string()),
    })
}

fn insert_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, sections) = path.split_last().ok_or("empty key")?;
    let mut current = table;
    for section in sections {
        let entry = current
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("[{section}] in the file is not a table"))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}
