//! `/api/v1/placements`: list, get, create, replace, delete.

use hyper::{Response, StatusCode};
use serde_json::Value as Json;

use super::{Answer, Call, error, json, snapshot, tagged};
use crate::admin::audit::Target;
use crate::admin::edit::etag_of;
use crate::admin::model::PlacementDoc;
use crate::admin::model::{ErrorDoc, Problems};
use crate::http::Body;

#[utoipa::path(get, path = "/api/v1/placements", tag = "placements",
    responses((status = 200, description = "Every placement of the file", body = [PlacementDoc]),
        (status = 401, body = ErrorDoc)))]
pub(super) async fn list_placements(call: &Call<'_>) -> Response<Body> {
    match snapshot(call).await {
        Ok(s) => json(StatusCode::OK, &s.placements()),
        Err(r) => r,
    }
}

#[utoipa::path(get, path = "/api/v1/placements/{id}", tag = "placements",
    params(("id" = String, Path, description = "Placement id")),
    responses((status = 200, description = "The placement; ETag for writes", body = PlacementDoc),
        (status = 401, body = ErrorDoc), (status = 404, body = ErrorDoc)))]
pub(super) async fn get_placement(call: &Call<'_>, id: &str) -> Response<Body> {
    match snapshot(call).await.map(|s| s.placement(id)) {
        Ok(Some(p)) => tagged(&p, &etag_of(&p)),
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no placement {id:?}")),
        Err(r) => r,
    }
}

#[utoipa::path(post, path = "/api/v1/placements", tag = "placements",
    request_body = PlacementDoc,
    responses((status = 201, description = "Created", body = PlacementDoc),
        (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 409, body = ErrorDoc),
        (status = 422, body = Problems)))]
pub(super) async fn create_placement(call: &Call<'_>) -> Answer {
    let doc: PlacementDoc = call.json()?;
    Ok(call
        .write(
            Target::Placement(doc.id.clone()),
            StatusCode::CREATED,
            move |s| s.create_placement(&doc),
            |e| e.after.clone(),
        )
        .await)
}

#[utoipa::path(put, path = "/api/v1/placements/{id}", tag = "placements",
    params(("id" = String, Path, description = "Placement id"),
        ("If-Match" = String, Header, description = "The placement's ETag")),
    request_body = PlacementDoc,
    responses((status = 200, description = "Replaced", body = PlacementDoc),
        (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 404, body = ErrorDoc),
        (status = 412, body = ErrorDoc), (status = 422, body = Problems), (status = 428, body = ErrorDoc)))]
pub(super) async fn replace_placement(call: &Call<'_>, id: &str) -> Answer {
    let tag = call.if_match()?;
    let doc: PlacementDoc = call.json()?;
    let owned = id.to_string();
    Ok(call
        .write(
            Target::Placement(owned.clone()),
            StatusCode::OK,
            move |s| s.update_placement(&owned, &tag, &doc),
            |e| e.after.clone(),
        )
        .await)
}

#[utoipa::path(delete, path = "/api/v1/placements/{id}", tag = "placements",
    params(("id" = String, Path, description = "Placement id"),
        ("If-Match" = String, Header, description = "The placement's ETag")),
    responses((status = 204, description = "Deleted"),
        (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 404, body = ErrorDoc),
        (status = 412, body = ErrorDoc), (status = 422, description = "Still used by a campaign", body = Problems),
        (status = 428, body = ErrorDoc)))]
pub(super) async fn delete_placement(call: &Call<'_>, id: &str) -> Answer {
    let tag = call.if_match()?;
    let owned = id.to_string();
    Ok(call
        .write(
            Target::Placement(owned.clone()),
            StatusCode::NO_CONTENT,
            move |s| s.delete_placement(&owned, &tag),
            |_| Json::Null,
        )
        .await)
}
