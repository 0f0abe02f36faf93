//! Editing the campaigns file: the one source of truth, shared by the API, the console and
//! people with an editor.
//!
//! Invariants:
//! 1. **One writer at a time, on the current file.** Writes are serialised by a mutex; under it
//!    the file is read again, so an edit is applied to what is on disk now (including a hand
//!    edit made a second ago), never to a copy read earlier.
//! 2. **No silent overwrite.** Every campaign (and placement) has an entity tag: a hash of its
//!    entry's values ([`etag_of`]). A write names the tag it read (`If-Match`); when the entry
//!    on disk has another one (another writer, a hand edit), nothing is written (`412`). The tag
//!    covers one entry, so an edit of another campaign does not make it stale, and comments or
//!    formatting do not count as changes.
//! 3. **Untouched text stays as it was.** The file is edited as a `toml_edit` document: the
//!    changed entry is merged key by key into the existing one (`merge_table`), so comments,
//!    order and formatting of everything else (and of the unchanged keys of the entry) are kept.
//! 4. **Only a valid file is written.** The new text is checked by the loader itself
//!    ([`crate::campaigns::file::parse`]); its problems come back in its words (`422`).
//! 5. **Atomic.** Written to a temporary file, fsynced and renamed ([`super::files`]); then the
//!    catalogue is reloaded at once (still under the mutex, so reloads publish in write order),
//!    not after the watcher's settle time.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use toml_edit::{ArrayOfTables, DocumentMut, Item};

use super::entries::{campaign_table, json_table, merge_table, table_json, to_json, value_json};
use super::files::{Version, hex};
use super::model::{CampaignDoc, PlacementDoc, Problem};
use crate::atomic_file;
use crate::campaigns::{CatalogueHandle, MAX_FILE_BYTES, file, reload};
use crate::metrics::Metrics;

/// Why an edit (or a read) failed.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// No such campaign, creative or placement: `404`.
    #[error("{0}")]
    NotFound(String),
    /// The id is taken: `409`.
    #[error("{0}")]
    Conflict(String),
    /// `If-Match` names another version: `412`.
    #[error("the entry changed since it was read (ETag is now {current}); read it again")]
    Stale {
        /// The entry's tag now.
        current: String,
    },
    /// The edit would make the file invalid: `422`.
    #[error("the campaigns file would not load")]
    Invalid(Vec<Problem>),
    /// The file cannot be read or written: `500`.
    #[error("campaigns file {0}")]
    File(String),
}

impl EditError {
    /// A `422` with one problem.
    pub(super) fn invalid(field: &str, message: impl Into<String>) -> EditError {
        let message = message.into();
        EditError::Invalid(vec![Problem {
            field: field.to_string(),
            text: if field.is_empty() {
                message.clone()
            } else {
                format!("{field}: {message}")
            },
            message,
            line: None,
        }])
    }
}

/// What a write changed: the entry before and after (JSON as the API shows it; `null` when it did
/// not exist or no longer does) and its new tag.
#[derive(Debug, Clone)]
pub struct Edited {
    /// The entry before.
    pub before: Json,
    /// The entry after.
    pub after: Json,
    /// The entry's tag after the write (`None` when deleted).
    pub etag: Option<String>,
}

/// The tag of an entry: a strong ETag over its values as the API shows them.
pub fn etag_of(entry: &Json) -> String {
    let bytes = serde_json::to_vec(entry).unwrap_or_default();
    format!("\"{}\"", hex(&Sha256::digest(&bytes)[..16]))
}

/// Whether an `If-Match` value matches `etag` (a list, `*`, or weak tags compared strongly).
pub fn if_match(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag)
}

/// The campaigns file and the catalogue it feeds.
pub struct CampaignsFile {
    path: PathBuf,
    catalogue: CatalogueHandle,
    metrics: Arc<Metrics>,
    /// Held for a whole write: read, check, write, reload (and the audit line after it).
    writer: tokio::sync::Mutex<()>,
}

/// What the writer's lock guards; dropping it lets the next writer in.
pub type WriteGuard<'a> = tokio::sync::MutexGuard<'a, ()>;

impl CampaignsFile {
    /// The file at `path`, published into `catalogue` after each write.
    pub fn new(path: PathBuf, catalogue: CatalogueHandle, metrics: Arc<Metrics>) -> CampaignsFile {
        CampaignsFile {
            path,
            catalogue,
            metrics,
            writer: tokio::sync::Mutex::new(()),
        }
    }

    /// The current catalogue (what is being served).
    pub fn catalogue(&self) -> &CatalogueHandle {
        &self.catalogue
    }

    /// Reads the file as it is on disk now (off the runtime threads).
    pub async fn read(&self) -> Result<Snapshot, EditError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || Snapshot::read(&path))
            .await
            .map_err(|e| EditError::File(e.to_string()))?
    }

    /// Applies `change` to the file as it is on disk now, validates, writes and reloads; returns
    /// what changed, still holding the writer's lock (so the caller's audit line is in write
    /// order too).
    pub async fn edit<F>(&self, change: F) -> Result<(Edited, WriteGuard<'_>), EditError>
    where
        F: FnOnce(&mut Snapshot) -> Result<Edited, EditError> + Send + 'static,
    {
        let guard = self.writer.lock().await;
        let path = self.path.clone();
        let edited = tokio::task::spawn_blocking(move || {
            let version = Version::of(&path);
            let mut snapshot = Snapshot::read(&path)?;
            let edited = change(&mut snapshot)?;
            let text = snapshot.doc.to_string();
            file::parse(&text).map_err(|problems| {
                EditError::Invalid(problems.iter().map(|p| Problem::from_loader(p)).collect())
            })?;
            // A hand edit saved while this one was being made: keep it, refuse this one.
            if Version::of(&path) != version {
                return Err(EditError::Conflict(
                    "the campaigns file changed while this edit was made; read it again and retry"
                        .into(),
                ));
            }
            atomic_file::write(&path, text.as_bytes(), None)
                .map_err(|e| EditError::File(format!("{}: cannot write: {e}", path.display())))?;
            Ok(edited)
        })
        .await
        .map_err(|e| EditError::File(e.to_string()))??;
        reload::reload(
            &self.path,
            &self.catalogue,
            &self.metrics,
            crate::file_watch::Cause::Changed,
        )
        .await;
        Ok((edited, guard))
    }
}

/// The campaigns file read into an editable document.
pub struct Snapshot {
    doc: DocumentMut,
}

impl Snapshot {
    fn read(path: &std::path::Path) -> Result<Snapshot, EditError> {
        let bytes = crate::file_watch::read_capped(path, MAX_FILE_BYTES)
            .map_err(|e| EditError::File(format!("{}: {e}", path.display())))?;
        let text = String::from_utf8(bytes)
            .map_err(|e| EditError::File(format!("{}: not UTF-8: {e}", path.display())))?;
        Snapshot::parse(&text)
    }

    /// A document from the file's text (a syntax error comes back as the loader reports it).
    pub fn parse(text: &str) -> Result<Snapshot, EditError> {
        match text.parse::<DocumentMut>() {
            Ok(doc) => Ok(Snapshot { doc }),
            Err(_) => Err(EditError::Invalid(match file::parse(text) {
                Err(problems) => problems.iter().map(|p| Problem::from_loader(p)).collect(),
                Ok(_) => vec![Problem::from_loader("the file is not TOML")],
            })),
        }
    }

    /// The text as it would be written.
    pub fn text(&self) -> String {
        self.doc.to_string()
    }

    fn entries(&self, key: &str) -> Option<&ArrayOfTables> {
        self.doc.get(key).and_then(Item::as_array_of_tables)
    }

    fn entries_mut(&mut self, key: &str) -> Result<&mut ArrayOfTables, EditError> {
        if self.doc.get(key).is_none() {
            self.doc
                .insert(key, Item::ArrayOfTables(ArrayOfTables::new()));
        }
        self.doc
            .get_mut(key)
            .and_then(Item::as_array_of_tables_mut)
            .ok_or_else(|| EditError::invalid(key, "is not a list of [[tables]]"))
    }

    /// Every campaign entry as JSON, in file order.
    pub fn campaigns(&self) -> Vec<Json> {
        self.entries("campaign")
            .map(|a| a.iter().map(|t| table_json(t, true)).collect())
            .unwrap_or_default()
    }

    /// Every placement entry as JSON, in file order.
    pub fn placements(&self) -> Vec<Json> {
        self.entries("placement")
            .map(|a| a.iter().map(|t| table_json(t, false)).collect())
            .unwrap_or_default()
    }

    /// Campaign `id` as JSON.
    pub fn campaign(&self, id: u32) -> Option<Json> {
        let position = self.position("campaign", &Json::from(id))?;
        self.entries("campaign")?
            .get(position)
            .map(|t| table_json(t, true))
    }

    /// Placement `id` as JSON.
    pub fn placement(&self, id: &str) -> Option<Json> {
        let position = self.position("placement", &Json::from(id))?;
        self.entries("placement")?
            .get(position)
            .map(|t| table_json(t, false))
    }

    fn position(&self, key: &str, id: &Json) -> Option<usize> {
        self.entries(key)?.iter().position(|t| {
            t.get("id")
                .and_then(Item::as_value)
                .map(value_json)
                .as_ref()
                == Some(id)
        })
    }

    /// The next free campaign id (1 more than the largest).
    pub fn next_campaign_id(&self) -> u32 {
        self.campaigns()
            .iter()
            .filter_map(|c| c.get("id").and_then(Json::as_u64))
            .max()
            .map_or(1, |m| u32::try_from(m + 1).unwrap_or(u32::MAX))
    }

    /// The next free creative id over the whole file.
    pub fn next_creative_id(&self) -> u32 {
        self.campaigns()
            .iter()
            .filter_map(|c| c.get("creatives").and_then(Json::as_array))
            .flatten()
            .filter_map(|c| c.get("id").and_then(Json::as_u64))
            .max()
            .map_or(1, |m| u32::try_from(m + 1).unwrap_or(u32::MAX))
    }

    /// Replaces campaign `id` with what `change` makes of it, if its tag matches `if_match`.
    pub fn update_campaign(
        &mut self,
        id: u32,
        if_match: &str,
        change: impl FnOnce(&mut CampaignDoc) -> Result<(), EditError>,
    ) -> Result<Edited, EditError> {
        let before = self
            .campaign(id)
            .ok_or_else(|| EditError::NotFound(format!("no campaign {id}")))?;
        check_tag(&before, if_match)?;
        let mut doc: CampaignDoc = serde_json::from_value(before.clone())
            .map_err(|e| EditError::invalid("", format!("campaign {id} in the file: {e}")))?;
        change(&mut doc)?;
        if doc.id != id {
            return Err(EditError::invalid(
                "id",
                format!("is {id} in the path; an id cannot change"),
            ));
        }
        let new = campaign_table(&doc)?;
        let position = self
            .position("campaign", &Json::from(id))
            .unwrap_or_default();
        let entries = self.entries_mut("campaign")?;
        if let Some(old) = entries.get_mut(position) {
            merge_table(old, new);
        }
        self.edited("campaign", before, &Json::from(id), true)
    }

    /// Adds a campaign (id 0 picks the next free one).
    pub fn create_campaign(&mut self, mut doc: CampaignDoc) -> Result<Edited, EditError> {
        if doc.id == 0 {
            doc.id = self.next_campaign_id();
        }
        if self.campaign(doc.id).is_some() {
            return Err(EditError::Conflict(format!("campaign {} exists", doc.id)));
        }
        let table = campaign_table(&doc)?;
        self.entries_mut("campaign")?.push(table);
        self.edited("campaign", Json::Null, &Json::from(doc.id), true)
    }

    /// Removes campaign `id`, if its tag matches.
    pub fn delete_campaign(&mut self, id: u32, if_match: &str) -> Result<Edited, EditError> {
        self.delete("campaign", &Json::from(id), if_match, true)
    }

    /// Replaces placement `id` with `doc`, if its tag matches.
    pub fn update_placement(
        &mut self,
        id: &str,
        if_match: &str,
        doc: &PlacementDoc,
    ) -> Result<Edited, EditError> {
        let key = Json::from(id);
        let before = self
            .placement(id)
            .ok_or_else(|| EditError::NotFound(format!("no placement {id:?}")))?;
        check_tag(&before, if_match)?;
        if doc.id != id {
            return Err(EditError::invalid(
                "id",
                format!("is {id:?} in the path; an id cannot change"),
            ));
        }
        let new = json_table(&to_json(doc)?, false)?;
        let position = self.position("placement", &key).unwrap_or_default();
        if let Some(old) = self.entries_mut("placement")?.get_mut(position) {
            merge_table(old, new);
        }
        self.edited("placement", before, &key, false)
    }

    /// Adds a placement.
    pub fn create_placement(&mut self, doc: &PlacementDoc) -> Result<Edited, EditError> {
        if self.placement(&doc.id).is_some() {
            return Err(EditError::Conflict(format!(
                "placement {:?} exists",
                doc.id
            )));
        }
        let table = json_table(&to_json(doc)?, false)?;
        self.entries_mut("placement")?.push(table);
        self.edited("placement", Json::Null, &Json::from(doc.id.as_str()), false)
    }

    /// Removes placement `id`, if its tag matches.
    pub fn delete_placement(&mut self, id: &str, if_match: &str) -> Result<Edited, EditError> {
        self.delete("placement", &Json::from(id), if_match, false)
    }

    fn delete(
        &mut self,
        key: &str,
        id: &Json,
        if_match: &str,
        campaign: bool,
    ) -> Result<Edited, EditError> {
        let position = self
            .position(key, id)
            .ok_or_else(|| EditError::NotFound(format!("no {key} {id}")))?;
        let entries = self.entries_mut(key)?;
        let before = entries
            .get(position)
            .map(|t| table_json(t, campaign))
            .unwrap_or_default();
        check_tag(&before, if_match)?;
        entries.remove(position);
        Ok(Edited {
            before,
            after: Json::Null,
            etag: None,
        })
    }

    fn edited(
        &self,
        key: &str,
        before: Json,
        id: &Json,
        campaign: bool,
    ) -> Result<Edited, EditError> {
        let after = self
            .position(key, id)
            .and_then(|p| self.entries(key)?.get(p).map(|t| table_json(t, campaign)))
            .ok_or_else(|| EditError::File(format!("{key} {id} vanished while editing")))?;
        Ok(Edited {
            etag: Some(etag_of(&after)),
            before,
            after,
        })
    }
}

fn check_tag(current: &Json, if_match_header: &str) -> Result<(), EditError> {
    let current = etag_of(current);
    if if_match(if_match_header, &current) {
        Ok(())
    } else {
        Err(EditError::Stale { current })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"# Our campaigns.

[[placement]]
id = "top" # the header slot
sizes = ["728x90"]

# Spring sale: keep the bid low.
[[campaign]]
id = 1
name = "Spring"   # aligned comment
url = "https://a.example"
bid = 2
[campaign.targeting]
countries = ["ru", "de"]  # two markets
[[campaign.creative]]
id = 11
kind = "text"
text = "Hello"

# Untouched neighbour.
[[campaign]]
id = 2
url = "https://b.example"
bid = 1.5
"#;

    fn doc(s: &Snapshot, id: u32) -> CampaignDoc {
        serde_json::from_value(s.campaign(id).unwrap()).unwrap()
    }

    #[test]
    fn an_edit_keeps_comments_and_the_other_entries_byte_for_byte() {
        let mut s = Snapshot::parse(FILE).unwrap();
        let before = s.campaign(1).unwrap();
        assert_eq!(before["creatives"][0]["id"], 11);
        assert_eq!(
            before["targeting"]["countries"],
            serde_json::json!(["ru", "de"])
        );
        let tag = etag_of(&before);
        let edited = s
            .update_campaign(1, &tag, |c| {
                c.active = false;
                c.bid = 3.0;
                c.creatives.push(super::super::model::CreativeDoc {
                    id: 12,
                    kind: "text".into(),
                    size: None,
                    image_url: None,
                    alt: None,
                    html: None,
                    text: Some("Bye".into()),
                    click_url: None,
                    weight: Some(2),
                });
                Ok(())
            })
            .unwrap();
        let text = s.text();
        for kept in [
            "# Our campaigns.",
            "id = \"top\" # the header slot",
            "# Spring sale: keep the bid low.",
            "name = \"Spring\"   # aligned comment",
            "countries = [\"ru\", \"de\"]  # two markets",
            "# Untouched neighbour.\n[[campaign]]\nid = 2\nurl = \"https://b.example\"\nbid = 1.5\n",
        ] {
            assert!(text.contains(kept), "{kept:?} lost:\n{text}");
        }
        assert!(
            text.contains("active = false") && text.contains("bid = 3.0"),
            "{text}"
        );
        let parsed = file::parse(&text).unwrap();
        let c = parsed.campaigns.iter().find(|c| c.id == 1).unwrap();
        assert!(!c.active);
        assert_eq!(
            c.creatives.iter().map(|c| c.id).collect::<Vec<_>>(),
            [11, 12]
        );
        assert_eq!(
            parsed
                .campaigns
                .iter()
                .find(|c| c.id == 2)
                .unwrap()
                .creatives
                .len(),
            0
        );
        assert_eq!(edited.before, before);
        assert_eq!(edited.after["active"], false);
        assert_ne!(edited.etag.as_deref(), Some(tag.as_str()));
        // Resume removes `active = false` again; the round trip is what the API returned.
        let tag = edited.etag.unwrap();
        s.update_campaign(1, &tag, |c| {
            c.active = true;
            Ok(())
        })
        .unwrap();
        assert!(!s.text().contains("active"), "{}", s.text());
        assert!(doc(&s, 1).active);
    }

    #[test]
    fn tags_are_per_entry_and_stale_ones_are_refused() {
        let mut s = Snapshot::parse(FILE).unwrap();
        let one = etag_of(&s.campaign(1).unwrap());
        let two = etag_of(&s.campaign(2).unwrap());
        s.update_campaign(2, &two, |c| {
            c.name = "renamed".into();
            Ok(())
        })
        .unwrap();
        assert_eq!(
            etag_of(&s.campaign(1).unwrap()),
            one,
            "another entry's edit"
        );
        assert!(matches!(
            s.update_campaign(2, &two, |_| Ok(())),
            Err(EditError::Stale { .. })
        ));
        // Formatting and comments are no change; values are.
        let reformatted = FILE.replace("bid = 2\n", "bid   =   2.0 # changed format\n");
        let s2 = Snapshot::parse(&reformatted).unwrap();
        assert_eq!(etag_of(&s2.campaign(1).unwrap()), one);
        let s3 = Snapshot::parse(&FILE.replace("bid = 2\n", "bid = 2.5\n")).unwrap();
        assert_ne!(etag_of(&s3.campaign(1).unwrap()), one);
        assert!(if_match(&format!("\"x\", W/{one}"), &one));
        assert!(if_match("*", &one));
        assert!(!if_match("\"x\"", &one));
    }

    #[test]
    fn a_hand_edit_during_an_edit_wins() {
        let dir = std::env::temp_dir().join(format!("rotator-edit-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("campaigns.toml");
        std::fs::write(&path, FILE).unwrap();
        let catalogue = crate::campaigns::Catalogue::load(&path).unwrap();
        let file = CampaignsFile::new(
            path.clone(),
            Arc::new(arc_swap::ArcSwap::from_pointee(catalogue)),
            Metrics::new(),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let hand = path.clone();
        let result = runtime.block_on(file.edit(move |s| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let text = std::fs::read_to_string(&hand).unwrap();
            std::fs::write(&hand, text.replace("bid = 1.5", "bid = 1.75")).unwrap();
            s.update_campaign(2, "*", |c| {
                c.name = "API".into();
                Ok(())
            })
        }));
        assert!(matches!(result, Err(EditError::Conflict(_))));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("bid = 1.75") && !text.contains("API"),
            "{text}"
        );
        // Without a hand edit the same change is written and served at once.
        let (edited, _) = runtime
            .block_on(file.edit(|s| {
                s.update_campaign(2, "*", |c| {
                    c.active = false;
                    Ok(())
                })
            }))
            .unwrap();
        assert_eq!(edited.after["active"], false);
        let served = file.catalogue().load();
        assert!(
            !served
                .campaigns()
                .iter()
                .find(|c| c.id == 2)
                .unwrap()
                .active
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn create_and_delete_entries() {
        let mut s = Snapshot::parse(FILE).unwrap();
        let mut new = doc(&s, 2);
        new.id = 0;
        new.name = "Third".into();
        new.start = Some("2026-12-01".into());
        new.placements = vec!["top".into()];
        let created = s.create_campaign(new.clone()).unwrap();
        assert_eq!(created.after["id"], 3);
        assert!(s.text().contains("start = 2026-12-01\n"), "{}", s.text());
        let mut dup = new.clone();
        dup.id = 3;
        assert!(matches!(
            s.create_campaign(dup),
            Err(EditError::Conflict(_))
        ));
        let mut bad = new;
        bad.start = Some("soon".into());
        assert!(matches!(s.create_campaign(bad), Err(EditError::Invalid(_))));
        assert_eq!(file::parse(&s.text()).unwrap().campaigns.len(), 3);
        let tag = etag_of(&s.campaign(1).unwrap());
        s.delete_campaign(1, &tag).unwrap();
        assert!(s.campaign(1).is_none());
        assert!(s.text().contains("# Untouched neighbour."));
        assert!(matches!(
            s.delete_campaign(1, "*"),
            Err(EditError::NotFound(_))
        ));
        let p = PlacementDoc {
            id: "side".into(),
            sizes: vec!["300x250".into()],
            kinds: vec![],
        };
        s.create_placement(&p).unwrap();
        let tag = etag_of(&s.placement("side").unwrap());
        let mut p2 = p.clone();
        p2.kinds = vec!["image".into()];
        s.update_placement("side", &tag, &p2).unwrap();
        let parsed = file::parse(&s.text()).unwrap();
        assert_eq!(parsed.placements.len(), 2);
        assert_eq!(
            s.next_creative_id(),
            1,
            "campaign 1 and its creatives are gone"
        );
    }
}
