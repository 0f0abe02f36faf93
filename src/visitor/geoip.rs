//! The visitor's country, from a MaxMind-format database read into memory.
//!
//! Two record layouts are read: GeoIP2/GeoLite2 (`country.iso_code`, also in City databases) and
//! the flat layout of free databases such as the bundled one (`country_code`). Strings are
//! borrowed from the database in memory, so a lookup does not allocate. An address with no
//! record, or a record with no country, is a normal answer (`None`), not an error.
//!
//! The file is read whole, not memory-mapped: with a map, any later change to the file (copying
//! another database over it, truncating it) is seen by the running server mid-lookup, and a read
//! past the new end of the file kills the process with SIGBUS. A copy in memory cannot change;
//! the price is the database's size in memory (8 MB for the bundled country database, about
//! 70 MB for a City one). [`reload`] replaces the whole copy when the file changes.

pub mod reload;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use serde::Deserialize;

use super::client_ip::canonical;
use crate::file_watch::ReadError;

/// An ISO 3166-1 alpha-2 country code, upper case.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Country([u8; 2]);

impl Country {
    /// Parses two ASCII letters (any case).
    pub fn parse(code: &str) -> Option<Country> {
        match code.as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(Country([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    /// The two letters, e.g. `*b"DE"` (for tables indexed by country; no UTF-8 check).
    pub fn letters(self) -> [u8; 2] {
        self.0
    }

    /// The code, e.g. "DE".
    pub fn as_str(&self) -> &str {
        // Only ASCII letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Debug for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the database cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GeoIpError {
    /// The file is missing, unreadable or not a MaxMind database.
    #[error("GeoIP database {path}: {message}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A lookup hit a broken part of the database.
    #[error("GeoIP lookup of {ip}: {message}")]
    Lookup {
        /// The address looked up.
        ip: IpAddr,
        /// What went wrong.
        message: String,
    },
}

/// The largest database file read, bytes. A GeoIP2 City database is about 70 MB and grows
/// slowly; this leaves it room while refusing a wrong path (a disk image) before reading it.
pub const MAX_FILE_BYTES: u64 = 512 << 20;

/// An open country database.
pub struct GeoIp {
    reader: maxminddb::Reader<Vec<u8>>,
    path: PathBuf,
    size: usize,
    /// Countries of records already decoded; belongs to this `reader`.
    records: RecordCache,
}

/// Slots of [`RecordCache`]; a country database has a few hundred distinct records.
const RECORD_CACHE_SLOTS: usize = 1024;

/// The country of each recently decoded record, by the record's offset in the data section.
///
/// Every lookup still walks the search tree for its own address; only decoding the record it
/// leads to (a serde pass over a map, about two thirds of a lookup's instructions) is skipped
/// when that record was decoded before. Many addresses share one record, as maxminddb's
/// `LookupResult::offset` documents. Each slot is one atomic word holding the offset and the
/// answer, so readers never lock and never see half an entry; a collision only costs a decode.
struct RecordCache {
    slots: Box<[AtomicU64]>,
}

impl RecordCache {
    fn new() -> RecordCache {
        RecordCache {
            slots: (0..RECORD_CACHE_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Slot word: `(offset + 1) << 17 | known << 16 | code`; 0 is an empty slot.
    fn word(offset: usize, country: Option<Country>) -> Option<u64> {
        let key = u64::try_from(offset).ok()?.checked_add(1)?;
        let value = country.map_or(0, |Country([a, b])| {
            1 << 16 | u64::from(a) << 8 | u64::from(b)
        });
        (key < 1 << 47).then_some(key << 17 | value)
    }

    fn slot(&self, offset: usize) -> &AtomicU64 {
        let hash = (offset as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
        &self.slots[hash as usize % self.slots.len()]
    }

    fn get(&self, offset: usize) -> Option<Option<Country>> {
        let word = self.slot(offset).load(Ordering::Relaxed);
        let key = u64::try_from(offset).ok()?.checked_add(1)?;
        if word >> 17 != key {
            return None;
        }
        Some((word & 1 << 16 != 0).then_some(Country([(word >> 8) as u8, word as u8])))
    }

    fn put(&self, offset: usize, country: Option<Country>) {
        if let Some(word) = Self::word(offset, country) {
            self.slot(offset).store(word, Ordering::Relaxed);
        }
    }
}

/// The current database, swapped whole on reload. Readers never wait.
pub type GeoIpHandle = Arc<ArcSwap<GeoIp>>;

#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    country: Option<CountryRecord<'a>>,
    country_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct CountryRecord<'a> {
    iso_code: Option<&'a str>,
}

/// Addresses looked up at open time to catch a database whose search tree is broken.
const PROBE_ADDRESSES: [&str; 4] = [
    "1.1.1.1",
    "81.2.69.160",
    "2001:4860:4860::8888",
    "2a02:6b8::feed:ff",
];

impl GeoIp {
    /// Reads `path` into memory (a regular file of at most [`MAX_FILE_BYTES`]) and checks it
    /// answers lookups.
    pub fn open(path: &Path) -> Result<GeoIp, GeoIpError> {
        let open_err = |message: String| GeoIpError::Open {
            path: path.to_path_buf(),
            message,
        };
        let bytes = match crate::file_watch::read_capped(path, MAX_FILE_BYTES) {
            Ok(b) => b,
            Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(open_err("no such file".into()));
            }
            Err(e) => return Err(open_err(e.to_string())),
        };
        let size = bytes.len();
        let reader = maxminddb::Reader::from_source(bytes).map_err(|e| open_err(e.to_string()))?;
        let geoip = GeoIp {
            reader,
            path: path.to_path_buf(),
            size,
            records: RecordCache::new(),
        };
        for probe in PROBE_ADDRESSES {
            let ip: IpAddr = probe
                .parse()
                .map_err(|_| open_err(format!("bad probe address {probe}")))?;
            geoip.country(ip).map_err(|e| open_err(e.to_string()))?;
        }
        Ok(geoip)
    }

    /// The file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `database_type` from the metadata, e.g. "GeoIP2-Country".
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// Build time of the database, seconds since the Unix epoch.
    pub fn build_epoch(&self) -> u64 {
        self.reader.metadata().build_epoch
    }

    /// Bytes of the database held in memory.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The country of `ip`, or `None` when the database has no country for it.
    pub fn country(&self, ip: IpAddr) -> Result<Option<Country>, GeoIpError> {
        let ip = canonical(ip);
        let lookup_err = |e: maxminddb::MaxMindDbError| GeoIpError::Lookup {
            ip,
            message: e.to_string(),
        };
        let result = self.reader.lookup(ip).map_err(lookup_err)?;
        let Some(offset) = result.offset() else {
            return Ok(None);
        };
        if let Some(country) = self.records.get(offset) {
            return Ok(country);
        }
        let Some(record) = result.decode::<Record<'_>>().map_err(lookup_err)? else {
            return Ok(None);
        };
        let code = record
            .country
            .and_then(|c| c.iso_code)
            .or(record.country_code);
        let country = code.and_then(Country::parse);
        self.records.put(offset, country);
        Ok(country)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/geoip");

    fn check_expected(db: &str) -> usize {
        let geoip = GeoIp::open(&Path::new(TEST_DATA).join(format!("{db}.mmdb"))).unwrap();
        let tsv = std::fs::read_to_string(
            Path::new(TEST_DATA).join(format!("{db}.expected-country.tsv")),
        )
        .unwrap();
        let mut checked = 0;
        for line in tsv.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let f: Vec<&str> = line.split('\t').collect();
            let ip: IpAddr = f[0].parse().unwrap();
            let want = Country::parse(f[2]);
            // The second answer comes from the record cache.
            for _ in 0..2 {
                assert_eq!(geoip.country(ip).unwrap(), want, "{db}: {ip}");
            }
            checked += 1;
        }
        checked
    }

    #[test]
    fn maxmind_test_databases_give_expected_countries() {
        for db in [
            "GeoIP2-Country-Test",
            "GeoLite2-Country-Test",
            "GeoIP2-City-Test",
            "GeoLite2-City-Test",
        ] {
            assert!(check_expected(db) > 10, "{db}");
        }
    }

    #[test]
    fn bundled_flat_database_and_mapped_addresses() {
        let geoip = GeoIp::open(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/data/country.mmdb"
        )))
        .unwrap();
        let tsv = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/geoip/full-expected-lookups.tsv"
        ))
        .unwrap();
        let mut checked = 0;
        for line in tsv.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let f: Vec<&str> = line.split('\t').collect();
            let ip: IpAddr = f[0].parse().unwrap();
            let want = if f[0].starts_with("::ffff:") {
                Some("RU")
            } else {
                Some(f[1]).filter(|c| !c.is_empty())
            };
            assert_eq!(
                geoip.country(ip).unwrap().as_ref().map(Country::as_str),
                want,
                "{ip}"
            );
            checked += 1;
        }
        assert!(checked >= 13);
    }

    #[test]
    fn addresses_outside_the_test_database_have_no_country() {
        let geoip = GeoIp::open(&Path::new(TEST_DATA).join("GeoIP2-Country-Test.mmdb")).unwrap();
        for ip in ["8.8.8.8", "1.1.1.1", "127.0.0.1", "2001:4860:4860::8888"] {
            assert_eq!(geoip.country(ip.parse().unwrap()).unwrap(), None, "{ip}");
        }
    }

    #[test]
    fn broken_databases_give_errors_not_panics() {
        let bad = Path::new(TEST_DATA).join("bad");
        let mut refused = 0;
        for entry in std::fs::read_dir(&bad).unwrap() {
            let path = entry.unwrap().path();
            match GeoIp::open(&path) {
                Err(e) => {
                    assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");
                    refused += 1;
                }
                // Some files are merely unusual; lookups must still not panic.
                Ok(g) => {
                    for ip in ["1.1.1.1", "81.2.69.160", "::1"] {
                        let _ = g.country(ip.parse().unwrap());
                    }
                }
            }
        }
        assert!(refused >= 1);
        let err = GeoIp::open(Path::new("/nonexistent/country.mmdb"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("/nonexistent/country.mmdb") && err.contains("no such file"),
            "{err}"
        );
        let not_db = GeoIp::open(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/Cargo.toml"
        )))
        .err()
        .unwrap();
        assert!(not_db.to_string().contains("Cargo.toml"));
    }

    #[test]
    fn record_cache_answers_only_for_the_offset_it_holds() {
        let cache = RecordCache::new();
        let de = Country::parse("DE");
        assert_eq!(cache.get(7), None);
        cache.put(7, de);
        cache.put(8, None);
        assert_eq!(cache.get(7), Some(de));
        assert_eq!(cache.get(8), Some(None));
        // Offsets sharing a slot replace each other; neither is mistaken for the other.
        let other = (8..)
            .find(|o| std::ptr::eq(cache.slot(*o), cache.slot(7)))
            .unwrap();
        cache.put(other, Country::parse("RU"));
        assert_eq!(cache.get(7), None);
        assert_eq!(cache.get(other), Some(Country::parse("RU")));
        // Offsets too large to pack are not cached.
        cache.put(usize::MAX, de);
        assert_eq!(cache.get(usize::MAX), None);
    }

    #[test]
    fn country_codes() {
        assert_eq!(Country::parse("de").unwrap().as_str(), "DE");
        assert!(Country::parse("DEU").is_none());
        assert!(Country::parse("1A").is_none());
        assert!(Country::parse("").is_none());
    }
}
