//! `docs/openapi.json` against the server's behaviour (issue 17, defect 8: the document lacked
//! 401 on 19 operations and 400 on four, so it was true of the code's annotations, not of the
//! server). Every operation of the document is sent to a real kilnd without valid credentials,
//! then as the admin with a bad parameter or body: each answer's status must be one the
//! document lists for that operation, and an error's body must be the documented JSON shape.

#![allow(clippy::unwrap_used)] // a failed set-up step should fail the test

mod common;

use common::*;
use kiln_api::ApiError;

fn document() -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// One operation of the document.
struct Operation {
    method: String,
    template: String,
    statuses: Vec<String>,
    query: Vec<String>,
    body: bool,
}

fn operations(doc: &serde_json::Value) -> Vec<Operation> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let statuses = op["responses"].as_object().unwrap().keys().cloned().collect();
            let query = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "query")
                        .map(|p| p["name"].as_str().unwrap().to_owned())
                        .collect()
                })
                .unwrap_or_default();
            let body = op.get("requestBody").is_some();
            out.push(Operation {
                method: method.to_uppercase(),
                template: path.clone(),
                statuses,
                query,
                body,
            });
        }
    }
    out
}

fn check(answer: &kiln_api::client::Response, documented: &[String], what: &str) {
    let status = answer.status.to_string();
    assert!(
        documented.contains(&status),
        "{what}: answered {status}, the document lists {documented:?}: {}",
        answer.text()
    );
    if answer.status >= 400 {
        let body = answer.json::<ApiError>();
        assert!(body.is_ok(), "{what}: {status} is not a JSON error: {:?}", answer.text());
    }
}

#[test]
fn every_documented_operation_answers_only_what_the_document_lists() {
    let base = std::env::temp_dir().join(format!("kilnd-openapi-{}", std::process::id()));
    let d = Daemon::start_with("openapi", fake_vmm(&base), &[]);
    let doc = document();
    let ops = operations(&doc);
    assert!(ops.len() >= 20, "the document has its operations: {}", ops.len());
    let stranger = d.with_token("kiln_not_a_token");
    let admin = d.admin();
    for Operation { method, template, statuses, query, body } in &ops {
        // Without valid credentials: 401, documented everywhere.
        let path = template.replace("{name}", "some-vm").replace("{id}", "1");
        let payload = body.then_some(&b"{}"[..]);
        let answer = stranger.raw(method, &path, payload).unwrap();
        assert_eq!(answer.status, 401, "{method} {path}");
        check(&answer, statuses, &format!("{method} {path} without credentials"));

        // As the admin, each kind of bad input the operation takes.
        let mut bad: Vec<(String, Option<&[u8]>)> = Vec::new();
        if template.contains("{name}") {
            bad.push((template.replace("{name}", "%FF"), payload));
        }
        if template.contains("{id}") {
            bad.push((template.replace("{id}", "abc"), payload));
        }
        for q in query {
            bad.push((format!("{path}?{q}=%FF%FE-not-a-value"), payload));
        }
        if *body {
            bad.push((path.clone(), Some(&b"{\"name\": "[..])));
        }
        for (bad_path, bad_body) in bad {
            let answer = admin.raw(method, &bad_path, bad_body).unwrap();
            check(&answer, statuses, &format!("{method} {bad_path} (bad input)"));
        }
    }
}
