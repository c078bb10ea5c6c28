//! The OpenAPI document, generated from the handlers' annotations and the `kiln-api` types.
//! `docs/openapi.json` is this document; a test fails when they differ
//! (`UPDATE_OPENAPI=1 cargo test -p kilnd openapi` rewrites it, as does `kilnd --print-openapi`).

use super::{acls, admin, exec, images, networks, port_forwards, vms, volumes};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "kilnd", description = "Kiln's VM manager: REST API on a Unix socket, and on TCP \
        with TLS when kilnd is started with --listen-tls. Authenticate with \
        `Authorization: Bearer TOKEN`, or on the Unix socket as a peer uid mapped to a principal."),
    paths(
        vms::list, vms::create, vms::show, vms::destroy, vms::start, vms::stop, vms::kill,
        vms::restart, vms::pause, vms::resume, vms::events, vms::logs, vms::console, vms::queue,
        exec::exec,
        admin::list_users, admin::create_user, admin::revoke_user, admin::list_grants,
        admin::create_grant, admin::delete_grant, admin::audit, admin::whoami, admin::metrics,
        volumes::list, volumes::create, volumes::show, volumes::resize, volumes::delete,
        volumes::copy,
        images::list, images::build, images::import, images::show, images::delete,
        networks::list, networks::create, networks::show, networks::delete, networks::set_acl,
        acls::list, acls::create, acls::show, acls::delete, acls::rules, acls::add_rule,
        acls::remove_rule, acls::set_nic_acl,
        port_forwards::list, port_forwards::create, port_forwards::delete,
    ),
    modifiers(&Bearer, &CommonErrors),
    security(("bearer" = [])),
    tags((name = "vms"), (name = "lifecycle"), (name = "volumes"), (name = "images"),
        (name = "networks"), (name = "access")),
)]
struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The answers every operation can give, added to each so the document says what the server
/// does: 401 (the authentication middleware runs on every route), 503 (a connection limit),
/// 400 where an operation takes parameters or a body, and 408 and 413 where it takes a body.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{Content, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content("application/json", Content::new(Some(Ref::from_schema_name("ApiError"))))
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let operations =
                [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for operation in operations.into_iter().flatten() {
                let has_body = operation.request_body.is_some();
                let has_params = operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
                let mut add = |status: &str, description: &str| {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(description).into());
                };
                add("401", "no credentials, or a bad or revoked token");
                add(
                    "503",
                    "over a connection limit (--max-connections, --max-connections-per-peer)",
                );
                if has_body || has_params {
                    add("400", "a bad parameter or body; `field` names it");
                }
                if has_body {
                    add("408", "the body did not arrive within --body-timeout");
                    add("413", "the body is larger than 2 MiB");
                }
            }
        }
    }
}

/// The document as pretty JSON with a final newline.
pub fn document() -> String {
    let mut text =
        ApiDoc::openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_openapi_document_matches_the_code() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        let generated = document();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).expect("writes docs/openapi.json");
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "docs/openapi.json differs from the API in the code; regenerate it with \
             `UPDATE_OPENAPI=1 cargo test -p kilnd openapi` (or `kilnd --print-openapi`)"
        );
    }
}
