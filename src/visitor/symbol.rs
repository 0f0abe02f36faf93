//! Interned names (browser and OS families, their lower-case targeting keys).
//!
//! The request path carries a `Sym` (a `u32`) instead of a string, so parsed User-Agents, the
//! targeting index and statistics keys are `Copy`, hash in a few nanoseconds and never allocate.
//! Names are resolved back to text only off the request path (flush, `explain`).
//!
//! Only trusted text is added: the family names uap-core's rules can produce (seeded when the
//! parser is built, see `families.rs`) and the names in the operator's campaigns. Parsing a
//! visitor's agent only looks names up ([`Sym::lookup`]), so a client inventing names (uap-core's
//! `$1` copies text out of the agent) adds nothing, and cannot change how a later visitor is
//! classified. [`MAX_SYMBOLS`] bounds the table all the same: past it, new names become
//! [`Sym::OTHER`].

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

/// Most distinct names the table holds; far above the few hundred families uap-core knows.
pub const MAX_SYMBOLS: usize = 65_536;

/// An interned name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sym(u32);

struct Table {
    ids: HashMap<Arc<str>, Sym>,
    names: Vec<Arc<str>>,
}

static TABLE: LazyLock<RwLock<Table>> = LazyLock::new(|| {
    let mut table = Table {
        ids: HashMap::new(),
        names: Vec::new(),
    };
    for name in ["", "Other", "other"] {
        let name: Arc<str> = name.into();
        table
            .ids
            .insert(name.clone(), Sym(table.names.len() as u32));
        table.names.push(name);
    }
    RwLock::new(table)
});

impl Sym {
    /// The empty name.
    pub const EMPTY: Sym = Sym(0);
    /// `Other`: uap-core's name for "not recognised", and the overflow name.
    pub const OTHER: Sym = Sym(1);
    /// `other`, the lower-case key of [`Sym::OTHER`].
    pub const OTHER_KEY: Sym = Sym(2);

    /// The symbol of `name`, adding it if new (and if the table has room).
    pub fn intern(name: &str) -> Sym {
        if let Some(sym) = Self::lookup(name) {
            return sym;
        }
        let mut table = TABLE.write().unwrap_or_else(|e| e.into_inner());
        if let Some(sym) = table.ids.get(name) {
            return *sym;
        }
        if table.names.len() >= MAX_SYMBOLS {
            return Sym::OTHER;
        }
        let sym = Sym(table.names.len() as u32);
        let name: Arc<str> = name.into();
        table.ids.insert(name.clone(), sym);
        table.names.push(name);
        sym
    }

    /// The symbol of `name` if it was interned before; never adds.
    pub fn lookup(name: &str) -> Option<Sym> {
        TABLE
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .ids
            .get(name)
            .copied()
    }

    /// The symbol of the lower-case form of `name` if it was interned before; never adds.
    pub fn lookup_lowercase(name: &str) -> Option<Sym> {
        if name.bytes().any(|b| b.is_ascii_uppercase()) || !name.is_ascii() {
            Sym::lookup(&name.to_lowercase())
        } else {
            Sym::lookup(name)
        }
    }

    /// The symbol's number: dense from 0 and below [`MAX_SYMBOLS`], for tables indexed by symbol.
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The symbol of the lower-case form of `name`.
    pub fn intern_lowercase(name: &str) -> Sym {
        if name.bytes().any(|b| b.is_ascii_uppercase()) || !name.is_ascii() {
            Sym::intern(&name.to_lowercase())
        } else {
            Sym::intern(name)
        }
    }

    /// The name.
    pub fn name(self) -> Arc<str> {
        let table = TABLE.read().unwrap_or_else(|e| e.into_inner());
        table
            .names
            .get(self.0 as usize)
            .cloned()
            .unwrap_or_else(|| table.names[1].clone())
    }
}

impl std::fmt::Display for Sym {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_identity() {
        let a = Sym::intern("Chrome Mobile");
        assert_eq!(Sym::intern("Chrome Mobile"), a);
        assert_eq!(&*a.name(), "Chrome Mobile");
        assert_eq!(
            Sym::intern_lowercase("Chrome Mobile"),
            Sym::intern("chrome mobile")
        );
        assert_eq!(Sym::intern("Other"), Sym::OTHER);
        assert_eq!(Sym::intern(""), Sym::EMPTY);
        assert_eq!(Sym::lookup("never interned anywhere 42"), None);
    }
}
