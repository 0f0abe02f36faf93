//! The admin listener: an authenticated REST API (`/api/v1`) over the campaigns file.
pub mod auth;
pub mod edit;
pub mod files;
pub mod model;
pub mod session;
pub mod tokens;
