//! `/api/v1/campaigns/{id}/creatives`: a campaign's creatives (writes carry the campaign's ETag:
//! a creative is part of its campaign's entry).

use hyper::{Response, StatusCode};
use serde_json::Value as Json;

use super::{Answer, Call, error, snapshot, tagged};
use crate::admin::audit::Target;
use crate::admin::edit::{EditError, etag_of};
use crate::admin::model::CreativeDoc;
use crate::admin::model::{ErrorDoc, Problems};
use crate::http::Body;

/// The creative `creative` of a campaign's JSON.
fn creative_of(campaign: &Json, creative: u32) -> Option<Json> {
    campaign["creatives"]
        .as_array()?
        .iter()
        .find(|c| c["id"] == creative)
        .cloned()
}

#[utoipa::path(get, path = "/api/v1/campaigns/{id}/creatives", tag = "creatives",
    params(("id" = u32, Path, description = "Campaign id")),
    responses((status = 200, description = "The campaign's creatives; ETag is the campaign's", body = [CreativeDoc]),
        (status = 401, body = ErrorDoc), (status = 404, body = ErrorDoc)))]
pub(super) async fn list_creatives(call: &Call<'_>, id: u32) -> Response<Body> {
    match snapshot(call).await.map(|s| s.campaign(id)) {
        Ok(Some(c)) => tagged(&c["creatives"], &etag_of(&c)),
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no campaign {id}")),
        Err(r) => r,
    }
}

#[utoipa::path(get, path = "/api/v1/campaigns/{id}/creatives/{creative_id}", tag = "creatives",
    params(("id" = u32, Path, description = "Campaign id"), ("creative_id" = u32, Path, description = "Creative id")),
    responses((status = 200, description = "The creative; ETag is the campaign's", body = CreativeDoc),
        (status = 401, body = ErrorDoc), (status = 404, body = ErrorDoc)))]
pub(super) async fn get_creative(call: &Call<'_>, id: u32, creative: u32) -> Response<Body> {
    match snapshot(call).await.map(|s| s.campaign(id)) {
        Ok(Some(c)) => match creative_of(&c, creative) {
            Some(found) => tagged(&found, &etag_of(&c)),
            None => error(
                StatusCode::NOT_FOUND,
                &format!("campaign {id} has no creative {creative}"),
            ),
        },
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no campaign {id}")),
        Err(r) => r,
    }
}

#[utoipa::path(post, path = "/api/v1/campaigns/{id}/creatives", tag = "creatives",
    params(("id" = u32, Path, description = "Campaign id"),
        ("If-Match" = String, Header, description = "The campaign's ETag")),
    request_body = CreativeDoc,
    responses((status = 201, description = "Added (id 0 or absent: the next free id); ETag is the campaign's", body = CreativeDoc),
        (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 404, body = ErrorDoc),
        (status = 409, body = ErrorDoc), (status = 412, body = ErrorDoc), (status = 422, body = Problems),
        (status = 428, body = ErrorDoc)))]
pub(super) async fn create_creative(call: &Call<'_>, id: u32) -> Answer {
    let tag = call.if_match()?;
    let mut doc: CreativeDoc = call.json()?;
    let assigned = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(doc.id));
    let seen = assigned.clone();
    Ok(call
        .write(
            Target::Campaign(id),
            StatusCode::CREATED,
            move |s| {
                if doc.id == 0 {
                    doc.id = s.next_creative_id();
                }
                seen.store(doc.id, std::sync::atomic::Ordering::Relaxed);
                s.update_campaign(id, &tag, |c| {
                    if c.creatives.iter().any(|x| x.id == doc.id) {
                        return Err(EditError::Conflict(format!(
                            "campaign {id} has creative {} already",
                            doc.id
                        )));
                    }
                    c.creatives.push(doc);
                    Ok(())
                })
            },
            |e| {
                creative_of(
                    &e.after,
                    assigned.load(std::sync::atomic::Ordering::Relaxed),
                )
                .unwrap_or_default()
            },
        )
        .await)
}

#[utoipa::path(put, path = "/api/v1/campaigns/{id}/creatives/{creative_id}", tag = "creatives",
    params(("id" = u32, Path, description = "Campaign id"), ("creative_id" = u32, Path, description = "Creative id"),
        ("If-Match" = String, Header, description = "The campaign's ETag")),
    request_body = CreativeDoc,
    responses((status = 200, description = "Replaced; ETag is the campaign's", body = CreativeDoc),
        (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 404, body = ErrorDoc),
        (status = 412, body = ErrorDoc), (status = 422, body = Problems), (status = 428, body = ErrorDoc)))]
pub(super) async fn replace_creative(call: &Call<'_>, id: u32, creative: u32) -> Answer {
    let tag = call.if_match()?;
    let mut doc: CreativeDoc = call.json()?;
    if doc.id == 0 {
        doc.id = creative;
    }
    Ok(call
        .update_campaign(
            id,
            tag,
            StatusCode::OK,
            move |c| {
                let slot = c
                    .creatives
                    .iter_mut()
                    .find(|x| x.id == creative)
                    .ok_or_else(|| {
                        EditError::NotFound(format!("campaign {id} has no creative {creative}"))
                    })?;
                *slot = doc;
                Ok(())
            },
            |e| creative_of(&e.after, creative).unwrap_or_default(),
        )
        .await)
}

#[utoipa::path(delete, path = "/api/v1/campaigns/{id}/creatives/{creative_id}", tag = "creatives",
    params(("id" = u32, Path, description = "Campaign id"), ("creative_id" = u32, Path, description = "Creative id"),
        ("If-Match" = String, Header, description = "The campaign's ETag")),
    responses((status = 204, description = "Removed"),
        (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 404, body = ErrorDoc),
        (status = 412, body = ErrorDoc), (status = 428, body = ErrorDoc)))]
pub(super) async fn delete_creative(call: &Call<'_>, id: u32, creative: u32) -> Answer {
    let tag = call.if_match()?;
    Ok(call
        .update_campaign(
            id,
            tag,
            StatusCode::NO_CONTENT,
            move |c| {
                let before = c.creatives.len();
                c.creatives.retain(|x| x.id != creative);
                if c.creatives.len() == before {
                    return Err(EditError::NotFound(format!(
                        "campaign {id} has no creative {creative}"
                    )));
                }
                Ok(())
            },
            |_| Json::Null,
        )
        .await)
}
