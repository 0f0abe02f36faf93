//! `/api/v1/campaigns`: list, get, create, replace, delete, pause, resume.

use hyper::{Response, StatusCode};
use serde_json::Value as Json;

use super::{Answer, Call, error, json, snapshot, tagged};
use crate::admin::audit::Target;
use crate::admin::edit::etag_of;
use crate::admin::model::CampaignDoc;
use crate::admin::model::{ErrorDoc, Problems};
use crate::http::Body;

#[utoipa::path(get, path = "/api/v1/campaigns", tag = "campaigns",
    responses((status = 200, description = "Every campaign of the file, in file order", body = [CampaignDoc]),
        (status = 401, body = ErrorDoc)))]
pub(super) async fn list_campaigns(call: &Call<'_>) -> Response<Body> {
    match snapshot(call).await {
        Ok(s) => json(StatusCode::OK, &s.campaigns()),
        Err(r) => r,
    }
}

#[utoipa::path(get, path = "/api/v1/campaigns/{id}", tag = "campaigns",
    params(("id" = u32, Path, description = "Campaign id")),
    responses((status = 200, description = "The campaign; ETag for writes", body = CampaignDoc,
            headers(("ETag" = String, description = "Tag of this campaign's entry"))),
        (status = 401, body = ErrorDoc), (status = 404, body = ErrorDoc)))]
pub(super) async fn get_campaign(call: &Call<'_>, id: u32) -> Response<Body> {
    match snapshot(call).await.map(|s| s.campaign(id)) {
        Ok(Some(c)) => tagged(&c, &etag_of(&c)),
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no campaign {id}")),
        Err(r) => r,
    }
}

#[utoipa::path(post, path = "/api/v1/campaigns", tag = "campaigns",
    request_body = CampaignDoc,
    responses((status = 201, description = "Created (Location, ETag)", body = CampaignDoc),
        (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 409, body = ErrorDoc),
        (status = 422, description = "The loader's problems", body = Problems)))]
pub(super) async fn create_campaign(call: &Call<'_>) -> Answer {
    let doc: CampaignDoc = call.json()?;
    let target = Target::Campaign(doc.id);
    Ok(call
        .write(
            target,
            StatusCode::CREATED,
            move |s| s.create_campaign(doc),
            |e| e.after.clone(),
        )
        .await)
}

#[utoipa::path(put, path = "/api/v1/campaigns/{id}", tag = "campaigns",
    params(("id" = u32, Path, description = "Campaign id"),
        ("If-Match" = String, Header, description = "The ETag of the campaign as read")),
    request_body = CampaignDoc,
    responses((status = 200, description = "Replaced (new ETag)", body = CampaignDoc),
        (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 404, body = ErrorDoc),
        (status = 412, description = "Changed since read", body = ErrorDoc),
        (status = 422, body = Problems), (status = 428, body = ErrorDoc)))]
pub(super) async fn replace_campaign(call: &Call<'_>, id: u32) -> Answer {
    let tag = call.if_match()?;
    let mut doc: CampaignDoc = call.json()?;
    if doc.id == 0 {
        doc.id = id;
    }
    Ok(call
        .update_campaign(
            id,
            tag,
            StatusCode::OK,
            |c| {
                *c = doc;
                Ok(())
            },
            |e| e.after.clone(),
        )
        .await)
}

#[utoipa::path(delete, path = "/api/v1/campaigns/{id}", tag = "campaigns",
    params(("id" = u32, Path, description = "Campaign id"),
        ("If-Match" = String, Header, description = "The ETag of the campaign as read")),
    responses((status = 204, description = "Deleted"),
        (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 404, body = ErrorDoc),
        (status = 412, body = ErrorDoc), (status = 422, body = Problems), (status = 428, body = ErrorDoc)))]
pub(super) async fn delete_campaign(call: &Call<'_>, id: u32) -> Answer {
    let tag = call.if_match()?;
    Ok(call
        .write(
            Target::Campaign(id),
            StatusCode::NO_CONTENT,
            move |s| s.delete_campaign(id, &tag),
            |_| Json::Null,
        )
        .await)
}

pub(super) async fn set_active(call: &Call<'_>, id: u32, active: bool) -> Answer {
    let tag = call.if_match()?;
    Ok(call
        .update_campaign(
            id,
            tag,
            StatusCode::OK,
            move |c| {
                c.active = active;
                Ok(())
            },
            |e| e.after.clone(),
        )
        .await)
}

#[utoipa::path(post, path = "/api/v1/campaigns/{id}/pause", tag = "campaigns",
    params(("id" = u32, Path, description = "Campaign id"),
        ("If-Match" = String, Header, description = "The ETag of the campaign as read")),
    responses((status = 200, description = "Paused (`active = false`), served no more within a reload", body = CampaignDoc),
        (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 404, body = ErrorDoc),
        (status = 412, body = ErrorDoc), (status = 428, body = ErrorDoc)))]
pub(super) async fn pause_campaign(call: &Call<'_>, id: u32) -> Answer {
    set_active(call, id, false).await
}

#[utoipa::path(post, path = "/api/v1/campaigns/{id}/resume", tag = "campaigns",
    params(("id" = u32, Path, description = "Campaign id"),
        ("If-Match" = String, Header, description = "The ETag of the campaign as read")),
    responses((status = 200, description = "Resumed (`active` removed: true)", body = CampaignDoc),
        (status = 401, body = ErrorDoc), (status = 403, body = ErrorDoc), (status = 404, body = ErrorDoc),
        (status = 412, body = ErrorDoc), (status = 428, body = ErrorDoc)))]
pub(super) async fn resume_campaign(call: &Call<'_>, id: u32) -> Answer {
    set_active(call, id, true).await
}
