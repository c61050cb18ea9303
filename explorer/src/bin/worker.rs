//! The explorer's Web Worker: holds a decoded bundle and its `Plan`, runs analysis tasks
//! (permutation ranges) sent by the page and posts the outputs back (postcard bytes).
//!
//! Protocol (arrays): worker -> page `["ready"]`; page -> worker `["init", bytes, InitMessage
//! JSON]`; worker -> page `["inited", error or ""]`; page -> worker `["task", id, Task JSON]`;
//! worker -> page `["result", id, TaskOutput bytes]` or `["error", id, message]`.

use explorer::{decode_for_page, subset, InitMessage};
use shared::analysis::{Plan, Task};
use std::cell::RefCell;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{DedicatedWorkerGlobalScope, MessageEvent};

thread_local! {
    static PLAN: RefCell<Option<Plan>> = const { RefCell::new(None) };
}

fn reply(scope: &DedicatedWorkerGlobalScope, parts: &[JsValue]) {
    let arr = js_sys::Array::new();
    for p in parts {
        arr.push(p);
    }
    let _ = scope.post_message(&arr);
}

fn init(bytes: &[u8], json: &str) -> Result<Plan, String> {
    let msg: InitMessage =
        serde_json::from_str(json).map_err(|e| format!("bad init message: {e}"))?;
    let bundle = decode_for_page("bundle", bytes)?;
    let bundle = subset(&bundle, msg.personas.as_deref())?;
    Plan::new(&bundle, &msg.config).map_err(|e| e.to_string())
}

fn main() {
    console_error_panic_hook::set_once();
    let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    let s = scope.clone();
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
        let data: js_sys::Array = ev.data().unchecked_into();
        match data.get(0).as_string().as_deref() {
            Some("init") => {
                let bytes = js_sys::Uint8Array::new(&data.get(1)).to_vec();
                let json = data.get(2).as_string().unwrap_or_default();
                let result = init(&bytes, &json);
                let err = result.as_ref().err().cloned().unwrap_or_default();
                PLAN.with(|p| *p.borrow_mut() = result.ok());
                reply(&s, &["inited".into(), err.into()]);
            }
            Some("task") => {
                let id = data.get(1);
                let json = data.get(2).as_string().unwrap_or_default();
                let out = PLAN.with(|p| -> Result<Vec<u8>, String> {
                    let plan = p.borrow();
                    let plan = plan.as_ref().ok_or("worker has no bundle")?;
                    let task: Task =
                        serde_json::from_str(&json).map_err(|e| format!("bad task: {e}"))?;
                    postcard::to_allocvec(&plan.run_task(&task)).map_err(|e| e.to_string())
                });
                match out {
                    Ok(bytes) => {
                        let arr = js_sys::Uint8Array::from(&bytes[..]);
                        reply(&s, &["result".into(), id, arr.into()]);
                    }
                    Err(e) => reply(&s, &["error".into(), id, e.into()]),
                }
            }
            _ => {}
        }
    });
    scope.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    on_message.forget();
    reply(&scope, &["ready".into()]);
}
