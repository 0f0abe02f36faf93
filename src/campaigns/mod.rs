//! Campaigns: the model, the file they come from, the index the auction reads, hot reload.
//!
//! The campaigns file is raw input ([`file`]): parsed, validated with messages that name the
//! file, line, campaign and field. A valid file becomes a [`Catalogue`]: immutable, sorted by
//! bid, with a [`index::TargetingIndex`] built once so that the auction never scans campaigns.
//! [`reload`] swaps whole catalogues atomically; a request keeps the one it started with.

pub mod countries;
pub mod file;
pub mod index;
pub mod reload;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper::header::HeaderValue;

use crate::visitor::geoip::Country;
use crate::visitor::user_agent::Device;
pub use file::CampaignsError;
use index::TargetingIndex;

/// One campaign, validated.
#[derive(Debug, Clone)]
pub struct Campaign {
    /// Unique id; 0 is reserved for "nothing won" in statistics.
    pub id: u32,
    /// Human-readable name.
    pub name: String,
    /// Where the visitor is sent when the campaign wins.
    pub url: String,
    /// `url` ready for the `Location` header (built once, not per request).
    pub location: HeaderValue,
    /// CPM bid, > 0.
    pub bid: f64,
    /// Inactive campaigns are loaded (and explained) but never win.
    pub active: bool,
    /// Who the campaign wants; an empty list means anyone.
    pub targeting: Targeting,
}

/// Targeting lists. Each empty list means "any".
#[derive(Debug, Clone, Default)]
pub struct Targeting {
    /// Countries.
    pub countries: Vec<Country>,
    /// Browser families or base families (case-insensitive).
    pub browsers: Vec<String>,
    /// OS families (case-insensitive).
    pub os: Vec<String>,
    /// Device types.
    pub devices: Vec<Device>,
}

/// An immutable, indexed set of campaigns: what one request reads.
#[derive(Debug)]
pub struct Catalogue {
    /// All campaigns, highest bid first (ties by id), inactive ones included.
    campaigns: Vec<Campaign>,
    index: TargetingIndex,
    source: PathBuf,
}

impl Catalogue {
    /// Builds the catalogue and its index.
    pub fn new(mut campaigns: Vec<Campaign>, source: PathBuf) -> Catalogue {
        campaigns.sort_by(|a, b| b.bid.total_cmp(&a.bid).then(a.id.cmp(&b.id)));
        // Loading grew the vector by doubling; kept for the catalogue's life (6 MB at 100,000).
        campaigns.shrink_to_fit();
        let index = TargetingIndex::build(&campaigns);
        Catalogue {
            campaigns,
            index,
            source,
        }
    }

    /// Loads and validates a campaigns file.
    pub fn load(path: &Path) -> Result<Catalogue, CampaignsError> {
        Ok(Catalogue::new(file::load(path)?, path.to_path_buf()))
    }

    /// Campaigns, highest bid first.
    pub fn campaigns(&self) -> &[Campaign] {
        &self.campaigns
    }

    /// The campaign at a position of [`Catalogue::campaigns`].
    pub fn get(&self, position: usize) -> Option<&Campaign> {
        self.campaigns.get(position)
    }

    /// Number of active campaigns.
    pub fn active(&self) -> usize {
        self.campaigns.iter().filter(|c| c.active).count()
    }

    /// The targeting index.
    pub fn index(&self) -> &TargetingIndex {
        &self.index
    }

    /// The file this came from.
    pub fn source(&self) -> &Path {
        &self.source
    }
}

/// The current catalogue, swapped whole on reload. Readers never wait.
pub type CatalogueHandle = Arc<ArcSwap<Catalogue>>;
