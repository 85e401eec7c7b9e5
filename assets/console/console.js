// The call console: a single page over the API this server serves. Hand-written, no library.
//
// Rules this file keeps:
// - Everything shown from the API (transcripts, prompts, names, labels, numbers) becomes text
//   nodes (`h()` appends strings as text); nothing here parses markup, so no data becomes markup.
// - The API key lives in sessionStorage and goes out only as the Authorization header; it never
//   appears in a URL (routes are the hash: #/calls/<id>) or in a log.
// - A 401 anywhere signs out: the key is dropped, and the sign-in form says why.
"use strict";

(() => {
  const KEY = "vocode-console-key";
  const PAGE_SIZE = 20;
  const MAX_PAGE_SIZE = 100;
  const TRANSCRIPT_PAGE = 200;
  const TURNS_PAGE = 50;
  const POLL_MS = 2000;
  const AFTER_END_POLLS = 10;
  const STATUSES = ["not_started", "in_progress", "ended", "error"];
  // Outcomes of calls that did not reach anyone, or did not reach who they were meant to.
  const FAILED_OUTCOMES = ["call_did_not_connect", "human_unanswered", "transfer_unanswered"];
  // Each stage is reached so many ms after the end of the caller's speech; a bar's segment is the
  // time from the stage before.
  const STAGES = [
    ["recognition_ms", "recognition final", "end of the caller's speech → the recogniser's final words"],
    ["end_of_turn_ms", "end of turn", "final words → the decision that the turn is over"],
    ["first_token_ms", "first model token", "decision → the model's first token"],
    ["first_audio_ms", "first audio", "first token → the voice's first audio"],
    ["first_frame_ms", "first frame sent", "first audio → the first frame sent to the call"],
  ];

  const $ = (id) => document.getElementById(id);
  let generation = 0; // bumped by each navigation: late answers for an old view are dropped
  let timers = [];
  let objectUrls = [];

  // ---- DOM helpers: text only ----

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  function svg(tag, attrs, ...children) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    setAttrs(el, attrs);
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  function setAttrs(el, attrs) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
      else if (name === "class") el.setAttribute("class", value);
      else el.setAttribute(name, value === true ? "" : String(value));
    }
  }

  // Replaces an element's children (nulls left out: replaceChildren would show them as "null").
  function fill(el, ...children) {
    el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  }

  const link = (route, text, attrs) => h("a", { href: "#" + route, ...attrs }, text);
  const id = (value) => (value && typeof value === "object" ? value.id : value) || null;
  const dash = "—";

  // ---- time ----

  const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
  const timeOnly = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });

  // `NormalizedCall` times are epoch seconds; `Call` times are ISO-8601 strings.
  function toDate(value) {
    if (value === null || value === undefined) return null;
    const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
    return Number.isNaN(date.getTime()) ? null : date;
  }

  function when(value, format) {
    const date = toDate(value);
    if (!date) return dash;
    return h("time", { datetime: date.toISOString() }, (format || dateTime).format(date));
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return dash;
    const s = Math.max(0, Math.round(seconds));
    const m = Math.floor(s / 60);
    return m ? `${m} min ${String(s % 60).padStart(2, "0")} s` : `${s} s`;
  }

  function milliseconds(ms) {
    return ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
  }

  function callDuration(call) {
    const start = toDate(call.start_time);
    const end = toDate(call.end_time);
    if (!start) return dash;
    if (!end) return call.status === "in_progress" ? "running" : dash;
    return duration((end - start) / 1000);
  }

  // ---- the API ----

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  class SignedOut extends Error {}

  async function detailOf(res) {
    try {
      const body = await res.json();
      if (typeof body.detail === "string") return body.detail;
      if (Array.isArray(body.detail)) return body.detail.map((d) => d.msg).join("; ");
    } catch (_) {
      // not JSON
    }
    return `${res.status} ${res.statusText}`;
  }

  async function api(path, key) {
    const bearer = key || sessionStorage.getItem(KEY);
    if (!bearer) throw new SignedOut();
    const res = await fetch(path, {
      headers: { Authorization: "Bearer " + bearer, Accept: "application/json" },
      credentials: "omit",
      cache: "no-store",
    });
    if (res.status === 401) {
      const detail = await detailOf(res);
      if (!key) signOut(`The server refused your API key: it is invalid or has been revoked ("${detail}"). Sign in with another.`);
      throw key ? new ApiError(401, detail) : new SignedOut();
    }
    if (!res.ok) throw new ApiError(res.status, await detailOf(res));
    return res;
  }

  const getJson = async (path) => (await api(path)).json();
  const q = (value) => encodeURIComponent(value);

  // ---- sign-in and navigation ----

  function signOut(message) {
    sessionStorage.removeItem(KEY);
    reset();
    fill($("view"));
    const error = $("sign-in-error");
    error.textContent = message || "";
    error.hidden = !message;
    if (location.hash) history.replaceState(null, "", location.pathname);
    showSignIn();
  }

  function showSignIn() {
    $("bar").hidden = true;
    $("foot").hidden = true;
    $("view").hidden = true;
    $("sign-in").hidden = false;
    document.title = "Sign in · vocode-server console";
    $("key").focus();
  }

  async function signIn(event) {
    event.preventDefault();
    const input = $("key");
    const key = input.value.trim();
    const error = $("sign-in-error");
    error.hidden = true;
    if (!key) {
      error.textContent = "Enter an API key.";
      error.hidden = false;
      return;
    }
    try {
      await api("/v1/usage", key);
    } catch (e) {
      error.textContent =
        e instanceof ApiError && e.status === 401
          ? `The server refused this API key: it is invalid or has been revoked ("${e.message}").`
          : `Could not sign in: ${e.message}`;
      error.hidden = false;
      input.select();
      return;
    }
    input.value = "";
    sessionStorage.setItem(KEY, key);
    if (!location.hash || location.hash === "#") location.hash = "#/calls";
    else route();
  }

  function reset() {
    generation += 1;
    timers.forEach(clearTimeout);
    timers = [];
    objectUrls.forEach((url) => URL.revokeObjectURL(url));
    objectUrls = [];
  }

  function route() {
    reset();
    if (!sessionStorage.getItem(KEY)) return showSignIn();
    $("sign-in").hidden = true;
    $("bar").hidden = false;
    $("foot").hidden = false;
    $("view").hidden = false;
    const [path, query] = location.hash.replace(/^#/, "").split("?");
    const params = new URLSearchParams(query || "");
    const parts = path
      .split("/")
      .filter(Boolean)
      .map((part) => {
        try {
          return decodeURIComponent(part);
        } catch (_) {
          return part; // a malformed escape: the API will say the id is not valid
        }
      });
    const section = parts[0] || "calls";
    for (const a of document.querySelectorAll("[data-nav]")) {
      if (a.dataset.nav === section) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    const views = {
      calls: () => (parts[1] ? callView(parts[1]) : callsView(params)),
      agents: () => (parts[1] ? recordView("agent", "/v1/agents", parts[1]) : agentsView(params)),
      numbers: () => numbersView(params),
      usage: () => usageView(),
      prompts: () => recordView("prompt", "/v1/prompts", parts[1]),
      voices: () => recordView("voice", "/v1/voices", parts[1]),
    };
    const view = views[section];
    if (!view) return render(`Not found`, h("p", { class: "error" }, "There is no such page in the console."));
    run(view);
  }

  // Runs a view's loader; a failure of the API shows its detail, as the API said it.
  async function run(view) {
    const gen = generation;
    render("Loading…", h("p", { class: "muted", role: "status" }, "Loading…"));
    try {
      await view(gen);
    } catch (e) {
      if (e instanceof SignedOut || gen !== generation) return;
      const status = e instanceof ApiError ? e.status : 0;
      const title = status === 404 ? "Not found" : status === 422 ? "Not valid" : "Something went wrong";
      render(title, h("p", { class: "error", role: "alert", id: "error" }, e.message));
    }
  }

  function render(title, ...content) {
    document.title = `${title} · vocode-server console`;
    const heading = h("h1", { tabindex: "-1" }, title);
    fill($("view"), heading, ...content);
    return heading;
  }

  function focusHeading() {
    const heading = $("view").querySelector("h1");
    if (heading) heading.focus({ preventScroll: true });
  }

  // ---- calls ----

  function failed(call) {
    return call.status === "error" || FAILED_OUTCOMES.includes(call.stage_outcome);
  }

  function badge(text, kind) {
    return text ? h("span", { class: `badge ${kind || ""}` }, text) : dash;
  }

  // `NormalizedCall` has no direction: an outbound call is placed from the agent's number.
  function direction(call) {
    if (call.direction) return call.direction;
    return call.from_number === call.agent_phone_number ? "outbound" : "inbound";
  }

  function pager(base, page, hasMore, extra) {
    const to = (p) => {
      const params = new URLSearchParams(extra || {});
      params.set("page", p);
      return `${base}?${params}`;
    };
    return h(
      "nav",
      { class: "pager", "aria-label": "Pages" },
      page > 1 ? link(to(page - 1), "← Newer", { rel: "prev" }) : h("span", { class: "muted" }, "← Newer"),
      h("span", {}, `Page ${page}`),
      hasMore ? link(to(page + 1), "Older →", { rel: "next" }) : h("span", { class: "muted" }, "Older →"),
    );
  }

  async function callsView(params) {
    const gen = generation;
    const page = Math.max(1, parseInt(params.get("page"), 10) || 1);
    const status = STATUSES.includes(params.get("status")) ? params.get("status") : "";
    // The API lists calls without a status filter: a filtered view reads the largest pages the
    // API gives, and shows the calls of each that match.
    const size = status ? MAX_PAGE_SIZE : PAGE_SIZE;
    const data = await getJson(`/v1/calls/list?page=${page}&size=${size}&sort_column=created_at&sort_desc=true`);
    if (gen !== generation) return;
    const filter = h(
      "select",
      {
        id: "status-filter",
        onchange: (e) => {
          // Pages of different sizes do not line up: a new filter starts from the first.
          const next = new URLSearchParams({ page: "1" });
          if (e.target.value) next.set("status", e.target.value);
          location.hash = `#/calls?${next}`;
        },
      },
      h("option", { value: "" }, "any status"),
      STATUSES.map((s) => h("option", { value: s, selected: s === status }, s)),
    );
    const controls = h("div", { class: "controls" }, h("label", { for: "status-filter" }, "Status "), filter);
    const items = data.items.filter((c) => !status || c.status === status);
    const summary = h(
      "p",
      { class: "muted", id: "calls-count" },
      `${data.total} call${data.total === 1 ? "" : "s"} in all, newest first.`,
      status ? ` ${items.length} of the ${data.items.length} calls on this page are ${status}.` : "",
    );
    let body;
    if (data.total === 0) {
      body = h(
        "p",
        { class: "empty", id: "empty" },
        "No calls yet. Place one with POST /v1/calls/create — on the sandbox carrier it needs no account (see the README).",
      );
    } else if (items.length === 0) {
      body = h("p", { class: "empty", id: "empty" }, `No ${status} calls on this page.`);
    } else {
      body = h(
        "table",
        { class: "calls", id: "calls" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ["Started", "Status", "Stage", "Stage outcome", "Direction", "From", "To", "Duration"].map((t) =>
              h("th", { scope: "col" }, t),
            ),
          ),
        ),
        h("tbody", {}, items.map(callRow)),
      );
    }
    const extra = status ? { status } : {};
    render("Calls", controls, summary, body, pager("/calls", page, data.has_more, extra));
    focusHeading();
  }

  function callRow(call) {
    const bad = failed(call);
    const started = toDate(call.start_time) ? when(call.start_time) : "not started";
    return h(
      "tr",
      { class: bad ? "failed" : null, "data-call": call.id },
      h("td", { "data-label": "Started" }, link(`/calls/${q(call.id)}`, started, { "aria-label": `Call ${call.id}` })),
      h("td", { "data-label": "Status" }, badge(call.status, `status-${call.status}`)),
      h("td", { "data-label": "Stage" }, call.stage || dash),
      h("td", { "data-label": "Stage outcome" }, badge(call.stage_outcome, bad ? "bad" : "")),
      h("td", { "data-label": "Direction" }, direction(call)),
      h("td", { "data-label": "From" }, call.from_number),
      h("td", { "data-label": "To" }, call.to_number),
      h("td", { "data-label": "Duration" }, callDuration(call)),
    );
  }

  async function callView(callId) {
    const gen = generation;
    const sections = {
      summary: h("dl", { class: "facts", id: "summary" }),
      timeline: h("ol", { class: "timeline", id: "timeline" }),
      recording: h("div", { id: "recording-box" }),
      transcript: h("div", { id: "transcript-box" }),
      agent: h("div", { id: "agent" }),
      latency: h("div", { id: "latency" }),
    };
    const transcript = transcriptView(sections.transcript);
    const turns = latencyView(sections.latency);
    let recordingShown = false;
    let first = true;
    let afterEnd = 0;
    let sawRunning = false;

    const load = async () => {
      const call = await getJson(`/v1/calls?id=${q(callId)}`);
      const [events, latency] = await Promise.all([
        getJson(`/calls/events?id=${q(callId)}`),
        getJson(`/calls/latency?id=${q(callId)}`),
      ]);
      if (gen !== generation) return;
      if (first) {
        first = false;
        render(
          "Call",
          h("p", { class: "muted mono" }, call.id),
          sections.summary,
          h("section", { "aria-labelledby": "h-timeline" }, h("h2", { id: "h-timeline" }, "Timeline"), sections.timeline),
          h("section", { "aria-labelledby": "h-recording" }, h("h2", { id: "h-recording" }, "Recording"), sections.recording),
          h("section", { "aria-labelledby": "h-transcript" }, h("h2", { id: "h-transcript" }, "Transcript"), sections.transcript),
          h("section", { "aria-labelledby": "h-latency" }, h("h2", { id: "h-latency" }, "Latency per turn"), sections.latency),
          h("section", { "aria-labelledby": "h-agent" }, h("h2", { id: "h-agent" }, "Agent"), sections.agent),
        );
        focusHeading();
        agentCard(sections.agent, call.agent);
      }
      summaryFacts(sections.summary, call, events);
      timelineSteps(sections.timeline, events);
      transcript.update(call);
      turns.update(latency);
      if (!recordingShown) {
        if (call.recording_available) {
          recordingShown = true;
          recordingPlayer(sections.recording, call.id, gen);
        } else {
          fill(sections.recording, 
            h(
              "p",
              { class: "empty", id: "no-recording" },
              call.hipaa_compliant
                ? "No recording: HIPAA-compliant calls keep none."
                : call.status === "ended" || call.status === "error"
                  ? "No recording for this call."
                  : "No recording yet: it appears when the call has ended, if the call is recorded.",
            ),
          );
        }
      }
      // Live while the call runs: poll until it is over, and a little longer for what comes
      // after its end (the recording is written when the call's stream closes).
      const running = call.status === "not_started" || call.status === "in_progress";
      sawRunning = sawRunning || running;
      const waitingForRecording = sawRunning && !running && !call.recording_available && !call.hipaa_compliant;
      if (running || (waitingForRecording && afterEnd++ < AFTER_END_POLLS)) {
        timers.push(setTimeout(() => load().catch(pollFailed), POLL_MS));
      }
    };
    const pollFailed = (e) => {
      if (e instanceof SignedOut || gen !== generation) return;
      sections.summary.after(h("p", { class: "error", role: "alert" }, `Live updates stopped: ${e.message}`));
    };
    await load();
  }

  function summaryFacts(dl, call, events) {
    const facts = [
      ["Status", badge(call.status, `status-${call.status}`)],
      ["Stage", call.stage || dash],
      ["Stage outcome", badge(call.stage_outcome, failed(call) ? "bad" : "")],
      ["Direction", events.direction],
      ["From", call.from_number],
      ["To", call.to_number],
      ["Started", when(call.start_time)],
      ["Ended", when(call.end_time)],
      ["Duration", callDuration(call)],
      ["Human detection", call.human_detection_result || dash],
      ["Provider", call.telephony_provider],
    ];
    if (call.error_message) facts.push(["Error", h("span", { class: "error" }, call.error_message)]);
    fill(dl, ...facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  }

  function timelineSteps(ol, data) {
    const created = toDate(data.events[0] && data.events[0].at);
    fill(ol, 
      ...data.events.map((step) => {
        const at = toDate(step.at);
        const offset = at && created && at > created ? ` (+${((at - created) / 1000).toFixed(1)} s)` : "";
        return h(
          "li",
          { class: `step step-${step.event}`, "data-event": step.event },
          h("span", { class: "step-name" }, step.event),
          " ",
          at ? when(step.at) : h("span", { class: "muted" }, "time not reported"),
          offset,
          h(
            "span",
            { class: "muted step-state" },
            ` status ${step.status}, stage ${step.stage}`,
            step.stage_outcome ? `, stage outcome ${step.stage_outcome}` : "",
          ),
        );
      }),
    );
  }

  // The recording needs the bearer header, so it is fetched and played from an object URL.
  async function recordingPlayer(box, callId, gen) {
    fill(box, h("p", { class: "muted", role: "status" }, "Loading the recording…"));
    try {
      const blob = await (await api(`/v1/calls/recording?id=${q(callId)}`)).blob();
      if (gen !== generation) return;
      const url = URL.createObjectURL(blob);
      objectUrls.push(url);
      fill(box, 
        h("audio", { id: "recording", controls: true, preload: "metadata", src: url }),
        h("p", { class: "muted" }, `${blob.type || "audio"}, ${(blob.size / 1024).toFixed(0)} KiB`),
      );
    } catch (e) {
      if (e instanceof SignedOut || gen !== generation) return;
      fill(box, h("p", { class: "error", id: "no-recording" }, `The recording could not be loaded: ${e.message}`));
    }
  }

  // A transcript is shown a page of lines at a time, so thousands of lines stay cheap.
  function transcriptView(box) {
    let shown = TRANSCRIPT_PAGE;
    let lines = [];
    let loaded = false;
    let hipaa = false;
    const draw = () => {
      if (hipaa) return fill(box, h("p", { class: "empty" }, "HIPAA-compliant calls keep no transcript."));
      if (!lines.length) return fill(box, h("p", { class: "empty", id: "no-transcript" }, "Nothing said yet."));
      const list = h(
        "ol",
        { class: "transcript", id: "transcript" },
        lines.slice(0, shown).map((line) => {
          const m = /^([A-Z][A-Z_ ]{0,30}): ?(.*)$/.exec(line);
          const speaker = m ? m[1] : "";
          return h(
            "li",
            { class: `line speaker-${speaker.toLowerCase().replace(/[^a-z]/g, "") || "none"}` },
            speaker ? h("span", { class: "speaker" }, speaker) : null,
            h("span", { class: "said" }, m ? m[2] : line),
          );
        }),
      );
      const rest = lines.length - shown;
      const more =
        rest > 0
          ? h(
              "button",
              {
                type: "button",
                id: "more-lines",
                onclick: () => {
                  shown += TRANSCRIPT_PAGE;
                  draw();
                },
              },
              `Show ${Math.min(rest, TRANSCRIPT_PAGE)} more of ${rest} lines`,
            )
          : null;
      fill(box, h("p", { class: "muted" }, `${lines.length} lines`), list, more);
    };
    return {
      update(call) {
        hipaa = call.hipaa_compliant;
        const next = (call.transcript || "").split("\n").filter((l) => l.length);
        // While the call runs, new lines show up when the end of the transcript was in view.
        if (loaded && shown >= lines.length) shown = Math.max(shown, Math.min(next.length, lines.length + TRANSCRIPT_PAGE));
        loaded = true;
        if (next.length !== lines.length || next.some((l, i) => l !== lines[i])) {
          lines = next;
          draw();
        } else if (!box.firstChild) {
          draw();
        }
      },
    };
  }

  // Each turn as a bar from the end of the caller's speech: the recogniser's final words, the
  // end-of-turn decision, the model's first token, the first audio and the first frame sent, each
  // reached so many ms after the end of speech (so each segment is the step's share).
  function latencyView(box) {
    let shown = TURNS_PAGE;
    let data = null;
    const draw = () => {
      if (!data.turns.length) {
        return fill(box, h("p", { class: "empty", id: "no-turns" }, "No answered turns recorded."));
      }
      const turns = data.turns.slice(0, shown);
      const segments = (t) => {
        const marks = STAGES.map(([key]) => t[key]);
        const out = [];
        let last = 0;
        for (const mark of marks) {
          if (mark === null || mark === undefined) {
            out.push(null);
            continue;
          }
          const end = Math.max(last, mark);
          out.push([last, end]);
          last = end;
        }
        return out;
      };
      const totals = turns.map((t) => {
        const segs = segments(t).filter(Boolean);
        return segs.length ? segs[segs.length - 1][1] : 0;
      });
      const max = Math.max(1, ...totals);
      const rowH = 22;
      const labelW = 70;
      const width = 600;
      const chartW = width - labelW - 70;
      const chart = svg(
        "svg",
        {
          id: "latency-chart",
          class: "chart",
          viewBox: `0 0 ${width} ${turns.length * rowH + 24}`,
          role: "img",
          "aria-label": `Latency of ${turns.length} turns, split into stages`,
        },
        turns.map((t, i) => {
          const y = i * rowH + 4;
          const segs = segments(t);
          return svg(
            "g",
            { class: "turn" },
            svg("text", { x: 0, y: y + 14, class: "label" }, `turn ${t.turn}`),
            segs.map((seg, s) =>
              seg && seg[1] > seg[0]
                ? svg(
                    "rect",
                    {
                      x: labelW + (seg[0] / max) * chartW,
                      y,
                      width: Math.max(1, ((seg[1] - seg[0]) / max) * chartW),
                      height: rowH - 6,
                      class: `seg seg-${s}`,
                    },
                    svg("title", {}, `turn ${t.turn}: ${STAGES[s][1]} ${milliseconds(seg[1] - seg[0])}`),
                  )
                : null,
            ),
            svg("text", { x: labelW + chartW + 6, y: y + 14, class: "label" }, milliseconds(totals[i])),
          );
        }),
      );
      const legend = h(
        "ul",
        { class: "legend" },
        STAGES.map(([, name, what], s) => h("li", {}, h("span", { class: `swatch seg-${s}` }), name, h("span", { class: "muted" }, ` (${what})`))),
      );
      const table = h(
        "table",
        { class: "summary" },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Stage"), h("th", { scope: "col" }, "p50"), h("th", { scope: "col" }, "p95"))),
        h(
          "tbody",
          {},
          STAGES.map(([key, name]) => {
            const p = data.summary[key] || {};
            const ms = (v) => (v === null || v === undefined ? dash : milliseconds(v));
            return h("tr", {}, h("th", { scope: "row" }, name), h("td", {}, ms(p.p50)), h("td", {}, ms(p.p95)));
          }),
        ),
      );
      const rest = data.turns.length - shown;
      const more =
        rest > 0
          ? h(
              "button",
              {
                type: "button",
                onclick: () => {
                  shown += TURNS_PAGE;
                  draw();
                },
              },
              `Show ${Math.min(rest, TURNS_PAGE)} more of ${rest} turns`,
            )
          : null;
      fill(box, legend, chart, more, table);
    };
    return {
      update(latency) {
        const changed = !data || JSON.stringify(data) !== JSON.stringify(latency);
        data = latency;
        if (changed) draw();
      },
    };
  }

  function agentCard(box, agent) {
    if (!agent || typeof agent !== "object") {
      fill(box, h("p", { class: "muted" }, agent ? String(agent) : dash));
      return;
    }
    const prompt = agent.prompt && typeof agent.prompt === "object" ? agent.prompt : null;
    const voice = agent.voice && typeof agent.voice === "object" ? agent.voice : null;
    const facts = [
      ["Agent", link(`/agents/${q(agent.id)}`, agent.name || agent.id)],
      ["Initial message", h("span", { class: "said", id: "initial-message" }, agent.initial_message || dash)],
      [
        "Prompt",
        id(agent.prompt)
          ? [link(`/prompts/${q(id(agent.prompt))}`, "the prompt"), prompt && prompt.content ? h("pre", { class: "text" }, prompt.content) : null]
          : dash,
      ],
      ["Voice", id(agent.voice) ? link(`/voices/${q(id(agent.voice))}`, (voice && voice.type) || "the voice") : dash],
      ["Language", agent.language || dash],
    ];
    fill(box, h("dl", { class: "facts" }, facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
  }

  // ---- agents, numbers, usage ----

  async function agentsView(params) {
    const gen = generation;
    const page = Math.max(1, parseInt(params.get("page"), 10) || 1);
    const data = await getJson(`/v1/agents/list?page=${page}&size=${PAGE_SIZE}&sort_column=created_at&sort_desc=true`);
    if (gen !== generation) return;
    const body = data.items.length
      ? h(
          "table",
          { class: "records", id: "agents" },
          h("thead", {}, h("tr", {}, ["Agent", "Initial message", "Prompt", "Voice", "Language"].map((t) => h("th", { scope: "col" }, t)))),
          h(
            "tbody",
            {},
            data.items.map((a) =>
              h(
                "tr",
                {},
                h("td", { "data-label": "Agent" }, link(`/agents/${q(a.id)}`, a.name || a.id)),
                h("td", { "data-label": "Initial message", class: "said" }, a.initial_message || dash),
                h("td", { "data-label": "Prompt" }, id(a.prompt) ? link(`/prompts/${q(id(a.prompt))}`, "prompt") : dash),
                h("td", { "data-label": "Voice" }, id(a.voice) ? link(`/voices/${q(id(a.voice))}`, (a.voice && a.voice.type) || "voice") : dash),
                h("td", { "data-label": "Language" }, a.language || dash),
              ),
            ),
          ),
        )
      : h("p", { class: "empty", id: "empty" }, "No agents yet.");
    render("Agents", h("p", { class: "muted" }, `${data.total} in all.`), body, pager("/agents", page, data.has_more));
    focusHeading();
  }

  async function numbersView(params) {
    const gen = generation;
    const page = Math.max(1, parseInt(params.get("page"), 10) || 1);
    const data = await getJson(`/v1/numbers/list?page=${page}&size=${PAGE_SIZE}&sort_column=created_at&sort_desc=true`);
    if (gen !== generation) return;
    const body = data.items.length
      ? h(
          "table",
          { class: "records", id: "numbers" },
          h("thead", {}, h("tr", {}, ["Number", "Label", "Provider", "Active", "Inbound agent", "Outbound only"].map((t) => h("th", { scope: "col" }, t)))),
          h(
            "tbody",
            {},
            data.items.map((n) =>
              h(
                "tr",
                { class: n.active ? null : "inactive" },
                h("td", { "data-label": "Number" }, n.number),
                h("td", { "data-label": "Label" }, n.label || dash),
                h("td", { "data-label": "Provider" }, n.telephony_provider),
                h("td", { "data-label": "Active" }, n.active ? "active" : "cancelled"),
                h("td", { "data-label": "Inbound agent" }, id(n.inbound_agent) ? link(`/agents/${q(id(n.inbound_agent))}`, (n.inbound_agent && n.inbound_agent.name) || id(n.inbound_agent)) : dash),
                h("td", { "data-label": "Outbound only" }, n.outbound_only ? "yes" : "no"),
              ),
            ),
          ),
        )
      : h("p", { class: "empty", id: "empty" }, "No numbers yet: buy or link one through the API.");
    render("Numbers", h("p", { class: "muted" }, `${data.total} in all.`), body, pager("/numbers", page, data.has_more));
    focusHeading();
  }

  async function usageView() {
    const gen = generation;
    const usage = await getJson("/v1/usage");
    if (gen !== generation) return;
    const used = usage.monthly_usage_minutes;
    const limit = usage.monthly_usage_limit_minutes;
    const content = [];
    if (limit === null || limit === undefined) {
      content.push(h("p", { id: "usage-text" }, `${used} minutes of calls this month. No monthly limit is set.`));
    } else {
      content.push(
        h("p", { id: "usage-text" }, `${used} of ${limit} minutes of calls used this month.`),
        h("meter", { id: "usage-meter", min: 0, max: Math.max(limit, 1), low: limit * 0.8, high: limit * 0.95, optimum: 0, value: Math.min(used, limit) }, `${used} of ${limit}`),
      );
      if (used >= limit) content.push(h("p", { class: "error" }, "The limit is reached: new calls are refused until next month."));
    }
    content.push(h("p", { class: "muted" }, `Plan: ${usage.plan_type}. Minutes count each call's duration rounded up to the minute.`));
    render("Usage", ...content);
    focusHeading();
  }

  // A prompt, a voice or an agent: its fields, as the API returns them, as text.
  async function recordView(kind, path, recordId) {
    const gen = generation;
    const record = await getJson(`${path}?id=${q(recordId || "")}`);
    if (gen !== generation) return;
    const value = (v) => {
      if (v === null || v === undefined || v === "") return dash;
      if (typeof v === "object") return h("pre", { class: "text" }, JSON.stringify(v, null, 2));
      if (typeof v === "string" && v.includes("\n")) return h("pre", { class: "text" }, v);
      return String(v);
    };
    const facts = Object.entries(record).map(([k, v]) => [h("dt", {}, k), h("dd", {}, value(v))]);
    render(kind[0].toUpperCase() + kind.slice(1), h("p", { class: "muted mono" }, record.id), h("dl", { class: "facts", id: "record" }, facts));
    focusHeading();
  }

  // ---- start ----

  document.addEventListener("DOMContentLoaded", () => {
    $("tz").textContent = Intl.DateTimeFormat().resolvedOptions().timeZone || "your time zone";
    $("sign-in-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", () => signOut(""));
    window.addEventListener("hashchange", route);
    route();
  });
})();
