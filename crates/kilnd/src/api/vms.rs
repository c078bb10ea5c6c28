//! `/v1/vms`: definitions, life-cycle verbs, events, logs and the console.

use super::error::ApiFailure;
use super::{ApiPath, ApiQuery, AppState, JsonBody, Peer};
use crate::auth::{Principal, Target};
use crate::bootfiles::Reader;
use crate::db::{DbError, VmRecord};
use crate::logs::Stream;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use kiln_api::{
    ApiError, CreateVm, Event, LogOptions, Permission, QueueView, StartOptions, StopOptions, Vm,
};
use std::time::Duration;

type ApiResult<T> = Result<T, ApiFailure>;

/// Refuses with 403 unless `principal` has `permission` on `target`.
pub(crate) fn require(
    principal: &Principal,
    permission: Permission,
    target: Target<'_>,
) -> ApiResult<()> {
    if principal.may(permission, target) {
        Ok(())
    } else {
        Err(ApiFailure::forbidden(
            permission,
            format!(
                "principal {:?} lacks permission `{}` on {target}",
                principal.name,
                permission.as_str()
            ),
        ))
    }
}

/// Loads a VM and checks `permission` on it.
pub(crate) fn vm_for(
    mgr: &AppState,
    principal: &Principal,
    name: &str,
    permission: Permission,
) -> ApiResult<VmRecord> {
    let record = mgr.db.vm(name)?;
    let target = Target::Vm { name: &record.vm.name, project: &record.vm.project };
    // A VM the caller may not even read is answered as if it did not exist: a 403 would tell
    // another project's members that the name is in use.
    if !principal.may(Permission::Read, target) {
        return Err(DbError::NoVm(name.to_owned()).into());
    }
    require(principal, permission, target)?;
    Ok(record)
}

/// Lists the VMs the caller may read.
#[utoipa::path(get, path = "/v1/vms", tag = "vms",
    responses((status = 200, body = [Vm]), (status = 401, body = ApiError)))]
pub async fn list(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
) -> ApiResult<Json<Vec<Vm>>> {
    let vms = mgr.db.vms()?;
    Ok(Json(
        vms.into_iter()
            .map(|r| r.vm)
            .filter(|vm| {
                p.may(Permission::Read, Target::Vm { name: &vm.name, project: &vm.project })
            })
            .collect(),
    ))
}

/// Defines a VM (state `defined`); every field is checked first and nothing is stored if one
/// is wrong.
#[utoipa::path(post, path = "/v1/vms", tag = "vms", request_body = CreateVm,
    responses((status = 201, body = Vm), (status = 400, body = ApiError),
        (status = 403, body = ApiError), (status = 409, description = "name taken", body = ApiError)))]
pub async fn create(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    JsonBody(spec): JsonBody<CreateVm>,
) -> ApiResult<(StatusCode, Json<Vm>)> {
    require(&p, Permission::Create, Target::Project(&spec.project))?;
    if spec.image.is_some() {
        // No host file is named (the image's are kilnd's), and the root volume is a copy of
        // the image: blocking work, off the async threads.
        let mgr = mgr.clone();
        let vm =
            tokio::task::spawn_blocking(move || mgr.create(&spec, Some(&p.name), Reader::Kilnd))
                .await
                .map_err(|e| ApiFailure::internal(&e))??;
        return Ok((StatusCode::CREATED, Json(vm)));
    }
    let vm = mgr.create(&spec, Some(&p.name), boot_reader(&p, peer)?)?;
    Ok((StatusCode::CREATED, Json(vm)))
}

/// Whose rights open the host files a new VM boots from: kilnd's for an admin, else the Unix
/// peer's (over TCP there is none, so only an admin may name host files there).
pub(crate) fn boot_reader(p: &Principal, peer: Peer) -> ApiResult<Reader> {
    if p.may(Permission::Admin, Target::Global) {
        return Ok(Reader::Kilnd);
    }
    match (peer.uid, peer.gid) {
        (Some(uid), Some(gid)) => Ok(Reader::Peer { uid, gid }),
        _ => Err(ApiFailure::forbidden(
            Permission::Admin,
            "a VM's kernel and initrd are host files, opened with the rights of the Unix user \
             who asks; over TCP there is none, so only an admin may name them: use the Unix \
             socket, or ask an admin",
        )),
    }
}

/// One VM.
#[utoipa::path(get, path = "/v1/vms/{name}", tag = "vms", params(("name" = String, Path)),
    responses((status = 200, body = Vm), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub async fn show(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Vm>> {
    Ok(Json(vm_for(&mgr, &p, &name, Permission::Read)?.vm))
}

/// Removes a VM that is defined, stopped or crashed, with its events and logs.
#[utoipa::path(delete, path = "/v1/vms/{name}", tag = "vms", params(("name" = String, Path)),
    responses((status = 204), (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, description = "the VM is active", body = ApiError)))]
pub async fn destroy(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    vm_for(&mgr, &p, &name, Permission::Delete)?;
    mgr.destroy(&name).map_err(|e| ApiFailure::from(e).during("destroy"))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Starts the VMM (from defined, stopped or crashed) if the scheduler lets it start now, and
/// answers once it runs; otherwise the VM is `queued` (the answer says so, with the reason) and
/// starts when the policy picks it.
#[utoipa::path(post, path = "/v1/vms/{name}/start", tag = "lifecycle",
    params(("name" = String, Path), StartOptions),
    responses((status = 200, description = "running, or queued", body = Vm), (status = 400, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn start(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(options): ApiQuery<StartOptions>,
) -> ApiResult<Json<Vm>> {
    vm_for(&mgr, &p, &name, Permission::Start)?;
    let vm = mgr
        .start(&name, Some(&p.name), &options)
        .map_err(|e| ApiFailure::from(e).during("start"))?;
    Ok(Json(vm))
}

/// The queue in policy order (positions count every queued VM; those the caller may not read
/// are left out), the host's capacity and use, and the head's estimated start.
#[utoipa::path(get, path = "/v1/queue", tag = "vms",
    responses((status = 200, body = QueueView), (status = 401, body = ApiError)))]
pub async fn queue(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
) -> ApiResult<Json<QueueView>> {
    let mut view = mgr.queue()?;
    view.entries
        .retain(|e| p.may(Permission::Read, Target::Vm { name: &e.name, project: &e.project }));
    Ok(Json(view))
}

/// Longest stop timeout a request may ask for.
const MAX_STOP_TIMEOUT_SECS: u64 = 3600;

fn timeout(options: &StopOptions) -> ApiResult<Option<Duration>> {
    match options.timeout_secs {
        Some(t) if t > MAX_STOP_TIMEOUT_SECS => Err(ApiFailure::bad_request(
            Some("timeout_secs".to_owned()),
            format!("timeout_secs {t} is more than {MAX_STOP_TIMEOUT_SECS}"),
        )),
        t => Ok(t.map(Duration::from_secs)),
    }
}

/// SIGTERM to the VMM, SIGKILL after the timeout; answers once it has ended.
#[utoipa::path(post, path = "/v1/vms/{name}/stop", tag = "lifecycle",
    params(("name" = String, Path), StopOptions),
    responses((status = 200, body = Vm), (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
pub async fn stop(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(options): ApiQuery<StopOptions>,
) -> ApiResult<Json<Vm>> {
    vm_for(&mgr, &p, &name, Permission::Stop)?;
    let vm = mgr
        .stop(&name, Some(&p.name), timeout(&options)?)
        .await
        .map_err(|e| ApiFailure::from(e).during("stop"))?;
    Ok(Json(vm))
}

/// SIGKILL to the VMM at once.
#[utoipa::path(post, path = "/v1/vms/{name}/kill", tag = "lifecycle", params(("name" = String, Path)),
    responses((status = 200, body = Vm), (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
pub async fn kill(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Vm>> {
    vm_for(&mgr, &p, &name, Permission::Stop)?;
    let vm =
        mgr.kill(&name, Some(&p.name)).await.map_err(|e| ApiFailure::from(e).during("kill"))?;
    Ok(Json(vm))
}

/// stop, then start (needs both permissions).
#[utoipa::path(post, path = "/v1/vms/{name}/restart", tag = "lifecycle",
    params(("name" = String, Path), StopOptions),
    responses((status = 200, body = Vm), (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
pub async fn restart(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(options): ApiQuery<StopOptions>,
) -> ApiResult<Json<Vm>> {
    vm_for(&mgr, &p, &name, Permission::Stop)?;
    vm_for(&mgr, &p, &name, Permission::Start)?;
    let vm = mgr
        .restart(&name, Some(&p.name), timeout(&options)?)
        .await
        .map_err(|e| ApiFailure::from(e).during("restart"))?;
    Ok(Json(vm))
}

/// SIGSTOP to the VMM (running -> paused).
#[utoipa::path(post, path = "/v1/vms/{name}/pause", tag = "lifecycle", params(("name" = String, Path)),
    responses((status = 200, body = Vm), (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
pub async fn pause(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Vm>> {
    vm_for(&mgr, &p, &name, Permission::Stop)?;
    let vm =
        mgr.pause(&name, Some(&p.name)).await.map_err(|e| ApiFailure::from(e).during("pause"))?;
    Ok(Json(vm))
}

/// SIGCONT to the VMM (paused -> running).
#[utoipa::path(post, path = "/v1/vms/{name}/resume", tag = "lifecycle", params(("name" = String, Path)),
    responses((status = 200, body = Vm), (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
pub async fn resume(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Vm>> {
    vm_for(&mgr, &p, &name, Permission::Start)?;
    let vm =
        mgr.resume(&name, Some(&p.name)).await.map_err(|e| ApiFailure::from(e).during("resume"))?;
    Ok(Json(vm))
}

/// The VM's state changes, oldest first.
#[utoipa::path(get, path = "/v1/vms/{name}/events", tag = "vms", params(("name" = String, Path)),
    responses((status = 200, body = [Event]), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub async fn events(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Vec<Event>>> {
    vm_for(&mgr, &p, &name, Permission::Read)?;
    Ok(Json(mgr.db.events(&name)?))
}

/// The tail of the console (or VMM) log, as text.
#[utoipa::path(get, path = "/v1/vms/{name}/logs", tag = "vms",
    params(("name" = String, Path), LogOptions),
    responses((status = 200, content_type = "text/plain", body = String,
            headers(("x-kiln-log-offset" = u64, description = "offset in the current log file where this answer ends; pass it as `from` to poll for more"))),
        (status = 400, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub async fn logs(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(options): ApiQuery<LogOptions>,
) -> ApiResult<impl IntoResponse> {
    let requested = options.stream.as_deref().unwrap_or("console");
    let stream = Stream::parse(requested).ok_or_else(|| {
        ApiFailure::bad_request(
            Some("stream".to_owned()),
            format!("stream {requested:?} is not `console` or `vmm`"),
        )
    })?;
    vm_for(&mgr, &p, &name, Permission::Read)?;
    let max = options.tail_bytes.unwrap_or(65_536);
    let (bytes, end) = mgr.log_read(&name, stream, options.from, max)?;
    let headers = [
        (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
        (header::HeaderName::from_static("x-kiln-log-offset"), end.to_string()),
    ];
    Ok((headers, bytes))
}

/// How long a console request waits for a VMM that has just started to bind its socket.
const CONSOLE_WAIT: Duration = Duration::from_secs(5);

/// Connects to a VMM's console socket; a VMM that was spawned a moment ago may not have bound
/// it yet (it validates its configuration first), so a missing socket is retried for a while.
async fn connect_console(socket: &std::path::Path) -> std::io::Result<tokio::net::UnixStream> {
    let deadline = tokio::time::Instant::now() + CONSOLE_WAIT;
    loop {
        match tokio::net::UnixStream::connect(socket).await {
            Ok(stream) => return Ok(stream),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// The protocol name of `Upgrade:` that `POST /v1/vms/{name}/console` switches to.
pub const CONSOLE_PROTOCOL: &str = "kiln-console";

/// True if `headers` ask to upgrade the connection to `protocol`.
pub(crate) fn asks_upgrade(headers: &HeaderMap, protocol: &str) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    has_token(header::CONNECTION, "upgrade") && has_token(header::UPGRADE, protocol)
}

/// Attaches to the VM's serial console. Send `Connection: Upgrade` and `Upgrade: kiln-console`
/// (HTTP/1.1 upgrade, as Docker's attach); after `101 Switching Protocols` the connection
/// carries the console's raw bytes both ways: what the guest writes to COM1 from now on, and
/// input typed into COM1. Several clients may attach. The connection ends when the VM's VMM
/// ends. Needs the `console` permission; the VM must be running or paused.
#[utoipa::path(post, path = "/v1/vms/{name}/console", tag = "vms", params(("name" = String, Path),
        ("connection" = String, Header, description = "`Upgrade`"),
        ("upgrade" = String, Header, description = "`kiln-console`")),
    responses((status = 101, description = "switched to the raw console"),
        (status = 400, description = "not an upgrade request", body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, description = "the VM is not running, or its VMM serves no console", body = ApiError)))]
pub async fn console(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
    mut request: Request,
) -> ApiResult<Response> {
    let record = vm_for(&mgr, &p, &name, Permission::Console)?;
    if !asks_upgrade(request.headers(), CONSOLE_PROTOCOL) {
        return Err(ApiFailure::bad_request(
            Some("upgrade".to_owned()),
            format!(
                "the console is a connection upgrade: send `Connection: Upgrade` and \
                 `Upgrade: {CONSOLE_PROTOCOL}` (kiln console does)"
            ),
        ));
    }
    let state = record.vm.state;
    if !matches!(state, kiln_api::VmState::Running | kiln_api::VmState::Paused) {
        return Err(ApiFailure::wrong_state(
            state,
            format!("cannot attach to the console: VM {name:?} is {state}"),
        ));
    }
    let socket = mgr.logs(&name).console_socket();
    let vmm = connect_console(&socket).await.map_err(|e| {
        ApiFailure::wrong_state(
            state,
            format!(
                "the VMM of {name:?} serves no console at {} ({e}); it may be ending, or it was \
                 started by a kilnd without consoles: restart the VM",
                socket.display()
            ),
        )
    })?;
    // Ends when either side is done: the VMM's end closes its socket.
    splice(&mut request, vmm, CONSOLE_PROTOCOL, format!("console of {name}"))
}

/// Answers `101 Switching Protocols` to `protocol` and, once the client's connection is
/// upgraded, copies bytes both ways between it and `other` until both ends are done.
pub(crate) fn splice(
    request: &mut Request,
    mut other: tokio::net::UnixStream,
    protocol: &'static str,
    what: String,
) -> ApiResult<Response> {
    let upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let mut client = hyper_util::rt::TokioIo::new(upgraded);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut other).await;
            }
            Err(e) => eprintln!("kilnd: {what}: the upgrade failed: {e}"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, protocol)
        .body(Body::empty())
        .map_err(|e| ApiFailure::internal(&e))
}
