//! Web Workers that run analysis tasks (permutation ranges) off the page's thread: one worker per
//! core, each holding its own decoded bundle and `Plan`. No SharedArrayBuffer: the bundle bytes
//! are copied to each worker once, tasks and results are small messages. Cancel = terminate.

use shared::analysis::{Task, TaskOutput};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{MessageEvent, Worker};

/// Trunk writes the worker's loader shim here (see index.html, `data-loader-shim`).
pub const WORKER_URL: &str = "./worker_loader.js";

#[derive(Clone, Copy, PartialEq, Debug)]
enum SlotState {
    Starting,
    Idle,
    Busy(u64),
}

struct Slot {
    worker: Worker,
    state: SlotState,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_error: Closure<dyn FnMut(web_sys::Event)>,
}

type ResultFn = Rc<dyn Fn(Task, TaskOutput)>;
type ErrorFn = Rc<dyn Fn(String)>;

struct Inner {
    slots: Vec<Slot>,
    queue: VecDeque<Task>,
    inflight: HashMap<u64, Task>,
    next_id: u64,
    bytes: Rc<Vec<u8>>,
    init_json: String,
    on_result: ResultFn,
    on_error: ErrorFn,
}

pub struct Pool {
    inner: Rc<RefCell<Inner>>,
}

impl Pool {
    /// Starts `n` workers for the bundle `bytes`; `init_json` is an [`crate::InitMessage`].
    pub fn new(
        n: usize,
        bytes: Rc<Vec<u8>>,
        init_json: String,
        on_result: impl Fn(Task, TaskOutput) + 'static,
        on_error: impl Fn(String) + 'static,
    ) -> Result<Pool, String> {
        let inner = Rc::new(RefCell::new(Inner {
            slots: Vec::new(),
            queue: VecDeque::new(),
            inflight: HashMap::new(),
            next_id: 0,
            bytes,
            init_json,
            on_result: Rc::new(on_result),
            on_error: Rc::new(on_error),
        }));
        for i in 0..n.max(1) {
            let worker = Worker::new(WORKER_URL)
                .map_err(|e| format!("Could not start a Web Worker ({WORKER_URL}): {e:?}"))?;
            let weak = Rc::downgrade(&inner);
            let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
                handle_message(&weak, i, ev)
            });
            worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
            let weak = Rc::downgrade(&inner);
            let on_error = Closure::<dyn FnMut(web_sys::Event)>::new(move |ev: web_sys::Event| {
                let msg = js_sys::Reflect::get(&ev, &"message".into())
                    .ok()
                    .and_then(|m| m.as_string())
                    .unwrap_or_else(|| "the worker script failed to load".into());
                if let Some(inner) = weak.upgrade() {
                    let f = inner.borrow().on_error.clone();
                    f(format!("Web Worker error: {msg}"));
                }
            });
            worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
            inner.borrow_mut().slots.push(Slot {
                worker,
                state: SlotState::Starting,
                _on_message: on_message,
                _on_error: on_error,
            });
        }
        Ok(Pool { inner })
    }

    pub fn push(&self, tasks: impl IntoIterator<Item = Task>) {
        self.inner.borrow_mut().queue.extend(tasks);
        dispatch(&self.inner);
    }

    /// Moves the queued tasks of (method, layer) `ml` to the front (the view on screen).
    pub fn prioritize(&self, ml: usize) {
        let mut inner = self.inner.borrow_mut();
        let (mut front, back): (VecDeque<Task>, VecDeque<Task>) =
            inner.queue.drain(..).partition(|t| t.method_layer() == ml);
        front.extend(back);
        inner.queue = front;
    }

    pub fn workers(&self) -> usize {
        self.inner.borrow().slots.len()
    }
}

impl Drop for Pool {
    /// Cancelling: terminated workers stop mid-task; nothing they computed is kept.
    fn drop(&mut self) {
        for s in &self.inner.borrow().slots {
            s.worker.terminate();
        }
    }
}

fn post(worker: &Worker, parts: &[JsValue]) -> Result<(), String> {
    let arr = js_sys::Array::new();
    for p in parts {
        arr.push(p);
    }
    worker
        .post_message(&arr)
        .map_err(|e| format!("postMessage failed: {e:?}"))
}

fn dispatch(inner_rc: &Rc<RefCell<Inner>>) {
    let mut errors = Vec::new();
    {
        let mut inner = inner_rc.borrow_mut();
        let inner = &mut *inner;
        for slot in inner.slots.iter_mut() {
            if slot.state != SlotState::Idle {
                continue;
            }
            let Some(task) = inner.queue.pop_front() else {
                break;
            };
            let id = inner.next_id;
            inner.next_id += 1;
            let json = serde_json::to_string(&task).expect("tasks serialise");
            match post(
                &slot.worker,
                &["task".into(), JsValue::from_f64(id as f64), json.into()],
            ) {
                Ok(()) => {
                    slot.state = SlotState::Busy(id);
                    inner.inflight.insert(id, task);
                }
                Err(e) => errors.push(e),
            }
        }
    }
    if !errors.is_empty() {
        let f = inner_rc.borrow().on_error.clone();
        f(errors.join("; "));
    }
}

fn handle_message(weak: &Weak<RefCell<Inner>>, slot: usize, ev: MessageEvent) {
    let Some(inner_rc) = weak.upgrade() else {
        return;
    };
    let data: js_sys::Array = ev.data().unchecked_into();
    let kind = data.get(0).as_string().unwrap_or_default();
    match kind.as_str() {
        "ready" => {
            let (worker, bytes, json) = {
                let inner = inner_rc.borrow();
                (
                    inner.slots[slot].worker.clone(),
                    inner.bytes.clone(),
                    inner.init_json.clone(),
                )
            };
            let arr = js_sys::Uint8Array::from(&bytes[..]);
            if let Err(e) = post(&worker, &["init".into(), arr.into(), json.into()]) {
                let f = inner_rc.borrow().on_error.clone();
                f(e);
            }
        }
        "inited" => {
            let err = data.get(1).as_string().unwrap_or_default();
            if !err.is_empty() {
                let f = inner_rc.borrow().on_error.clone();
                f(err);
                return;
            }
            inner_rc.borrow_mut().slots[slot].state = SlotState::Idle;
            dispatch(&inner_rc);
        }
        "result" | "error" => {
            let id = data.get(1).as_f64().unwrap_or(-1.0) as u64;
            let (task, on_result, on_error) = {
                let mut inner = inner_rc.borrow_mut();
                inner.slots[slot].state = SlotState::Idle;
                (
                    inner.inflight.remove(&id),
                    inner.on_result.clone(),
                    inner.on_error.clone(),
                )
            };
            dispatch(&inner_rc);
            if kind == "error" {
                on_error(data.get(2).as_string().unwrap_or_default());
                return;
            }
            let bytes = js_sys::Uint8Array::new(&data.get(2)).to_vec();
            match (task, postcard::from_bytes::<TaskOutput>(&bytes)) {
                (Some(t), Ok(out)) => on_result(t, out),
                (_, Err(e)) => on_error(format!("worker result could not be decoded: {e}")),
                (None, _) => {}
            }
        }
        _ => {}
    }
}
