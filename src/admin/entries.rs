//! How an entry of the campaigns file becomes the API's JSON and back, and how an edited entry
//! is merged into the one on disk so that what did not change keeps its text and comments.

use serde_json::Value as Json;
use toml_edit::{ArrayOfTables, Item, Table, Value};

use super::edit::EditError;
use super::model::{CampaignDoc, PlacementDoc};

pub(super) fn to_json(value: &impl serde::Serialize) -> Result<Json, EditError> {
    serde_json::to_value(value).map_err(|e| EditError::invalid("", e.to_string()))
}

/// An entry as the API shows it: a campaign through [`CampaignDoc`] (so every field is there,
/// defaults included), a placement through [`PlacementDoc`]; an entry that does not fit (a hand
/// edit the loader refuses too) as its raw values.
pub(super) fn table_json(table: &Table, campaign: bool) -> Json {
    let raw = Json::Object(
        table
            .iter()
            .map(|(k, item)| (k.to_string(), item_json(item)))
            .collect(),
    );
    let typed = if campaign {
        serde_json::from_value::<CampaignDoc>(raw.clone()).and_then(serde_json::to_value)
    } else {
        serde_json::from_value::<PlacementDoc>(raw.clone()).and_then(serde_json::to_value)
    };
    typed.unwrap_or(raw)
}

fn item_json(item: &Item) -> Json {
    match item {
        Item::None => Json::Null,
        Item::Value(v) => value_json(v),
        Item::Table(t) => Json::Object(
            t.iter()
                .map(|(k, i)| (k.to_string(), item_json(i)))
                .collect(),
        ),
        Item::ArrayOfTables(a) => Json::Array(
            a.iter()
                .map(|t| {
                    Json::Object(
                        t.iter()
                            .map(|(k, i)| (k.to_string(), item_json(i)))
                            .collect(),
                    )
                })
                .collect(),
        ),
    }
}

pub(super) fn value_json(value: &Value) -> Json {
    match value {
        Value::String(s) => Json::from(s.value().as_str()),
        Value::Integer(i) => Json::from(*i.value()),
        Value::Float(f) => {
            serde_json::Number::from_f64(*f.value()).map_or(Json::Null, Json::Number)
        }
        Value::Boolean(b) => Json::from(*b.value()),
        Value::Datetime(d) => Json::from(d.value().to_string()),
        Value::Array(a) => Json::Array(a.iter().map(value_json).collect()),
        Value::InlineTable(t) => Json::Object(
            t.iter()
                .map(|(k, v)| (k.to_string(), value_json(v)))
                .collect(),
        ),
    }
}

/// A campaign as a `[[campaign]]` table: defaults left out (an empty name, `active = true`,
/// empty lists), `start`/`end` as TOML dates, `creatives` as `[[campaign.creative]]`.
pub(super) fn campaign_table(doc: &CampaignDoc) -> Result<Table, EditError> {
    json_table(&to_json(doc)?, true)
}

pub(super) fn json_table(json: &Json, campaign: bool) -> Result<Table, EditError> {
    let mut table = Table::new();
    let Json::Object(map) = json else {
        return Err(EditError::invalid("", "expected an object"));
    };
    for (key, value) in map {
        if is_default(key, value) {
            continue;
        }
        let item = match (key.as_str(), value) {
            ("start" | "end", Json::String(s)) if campaign => {
                let datetime = s.parse::<toml_edit::Datetime>().map_err(|_| {
                    EditError::invalid(
                        key,
                        format!("{s:?} is not a date or date-time like 2026-12-01 or 2026-12-01T00:00:00Z"),
                    )
                })?;
                Item::Value(Value::from(datetime))
            }
            ("creatives", Json::Array(list)) if campaign => {
                let mut tables = ArrayOfTables::new();
                for c in list {
                    tables.push(json_table(c, false)?);
                }
                table.insert("creative", Item::ArrayOfTables(tables));
                continue;
            }
            (_, Json::Object(_)) => Item::Table(json_table(value, false)?),
            _ => Item::Value(json_value(value)),
        };
        table.insert(key, item);
    }
    Ok(table)
}

fn is_default(key: &str, value: &Json) -> bool {
    match value {
        Json::Null => true,
        Json::Bool(true) => key == "active",
        Json::String(s) => key == "name" && s.is_empty(),
        Json::Array(a) => a.is_empty(),
        Json::Object(o) => o.values().all(|v| is_default("", v)),
        Json::Bool(false) | Json::Number(_) => false,
    }
}

fn json_value(json: &Json) -> Value {
    match json {
        Json::Null => Value::from(""),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(f)) => Value::from(f),
            (None, None) => Value::from(n.to_string()),
        },
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(a) => Value::Array(a.iter().map(json_value).collect()),
        Json::Object(o) => {
            Value::InlineTable(o.iter().map(|(k, v)| (k.as_str(), json_value(v))).collect())
        }
    }
}

/// Two values are the same when their JSON is (formatting and comments aside; `2` and `2.0`
/// are the same number).
fn same(a: &Value, b: &Value) -> bool {
    let (a, b) = (value_json(a), value_json(b));
    a == b || matches!((a.as_f64(), b.as_f64()), (Some(x), Some(y)) if x == y)
}

/// Merges `new` into `old` key by key: keys `new` lacks are removed, unchanged values keep their
/// text (and comments), changed ones take the new value with the old key's decoration, tables
/// and lists of tables (matched by `id`) are merged in turn.
pub(super) fn merge_table(old: &mut Table, new: Table) {
    let gone: Vec<String> = old
        .iter()
        .filter(|(k, _)| !new.contains_key(k))
        .map(|(k, _)| k.to_string())
        .collect();
    for key in gone {
        old.remove(&key);
    }
    for (key, item) in new {
        match (old.get_mut(&key), item) {
            (Some(Item::Value(o)), Item::Value(n)) => {
                if !same(o, &n) {
                    let decor = o.decor().clone();
                    *o = n;
                    *o.decor_mut() = decor;
                }
            }
            (Some(Item::Table(o)), Item::Table(n)) => merge_table(o, n),
            (Some(Item::Value(Value::InlineTable(o))), Item::Table(n)) => {
                let n = n.into_inline_table();
                if !same(
                    &Value::InlineTable(o.clone()),
                    &Value::InlineTable(n.clone()),
                ) {
                    *o = n;
                }
            }
            (Some(Item::ArrayOfTables(o)), Item::ArrayOfTables(n)) => merge_tables(o, n),
            (Some(slot), item) => *slot = item,
            (None, item) => {
                old.insert(&key, item);
            }
        }
    }
}

/// Lists of tables matched by `id`: kept ones merged (keeping their place in the file), new ones
/// added, missing ones removed.
fn merge_tables(old: &mut ArrayOfTables, new: ArrayOfTables) {
    let id = |t: &Table| t.get("id").and_then(Item::as_value).map(value_json);
    let mut merged = ArrayOfTables::new();
    for n in new {
        let key = id(&n);
        match old.iter().find(|o| key.is_some() && id(o) == key) {
            Some(o) => {
                let mut o = o.clone();
                merge_table(&mut o, n);
                merged.push(o);
            }
            None => merged.push(n),
        }
    }
    *old = merged;
}
