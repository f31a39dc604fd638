// geoseg page: upload, poll the job, show and compare the results. No build step.
const $ = (id) => document.getElementById(id);
const form = $("upload"), drop = $("drop"), input = $("image");
let job = null, ticket = 0, expiry = null; // ticket: the job the page follows now; an older job's polls stop
let mine = null; // the id of the job this page uploaded, which leaving it cancels
const ENDED = ["done", "failed", "cancelled"];
const CANCELLING = "Cancelling… the step under way finishes first.";

["dragenter", "dragover"].forEach((e) => drop.addEventListener(e, (ev) => { ev.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((e) => drop.addEventListener(e, (ev) => { ev.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (ev) => { input.files = ev.dataTransfer.files; }); // the file input shows its name

// what applies to model i (the one running), or to the job as a whole when i is undefined
function modeParts(i) {
  const all = i === undefined, keras = all ? job.keras.some(Boolean) : job.keras[i]; // baselines ignore these
  const parts = keras ? [job.tta !== "none" ? `${job.tta} TTA` : "", job.precision !== "float32" ? job.precision : "",
    job.normalize ? `normalised ${job.normalize}` : ""] : [];
  const classes = all ? !job.regions.every(Boolean) : !job.regions[i]; // regions ignore the sieve
  if (job.sieve > 0 && classes) parts.push(`regions of ${job.sieve} px or more`);
  return parts.filter(Boolean);
}
function inParentheses(parts) { return parts.length ? ` (${parts.join(", ")})` : ""; }

// written only when the words change: each write of the status region is a new announcement, and a screen reader
// heard the same "Segmenting… 0%" twice a second for the whole job
function say(text, isError) {
  const m = $("message");
  if (m.textContent !== text) m.textContent = text;
  m.className = isError ? "error" : "";
}

// the field an error is about (the server's `field`): marked invalid, described by the message and focused; the
// error was only in the status line, with the focus on Segment. flag() alone clears the marks.
function flag(name) {
  document.querySelectorAll("[data-flagged]").forEach((el) => {
    el.removeAttribute("aria-invalid"); el.removeAttribute("data-flagged");
    const rest = (el.getAttribute("aria-describedby") || "").split(" ").filter((t) => t && t !== "message").join(" ");
    if (rest) el.setAttribute("aria-describedby", rest); else el.removeAttribute("aria-describedby");
  });
  $("field-error")?.remove();
  const el = name && $(name);
  if (!el) return false;
  el.setAttribute("aria-invalid", "true"); el.dataset.flagged = "1";
  // the message is seen beside the field too: the status line is under the form, off the screen while the focus is
  // on the file input at its top (a bad upload looked like nothing happened). Hidden from screen readers, which
  // hear the status line and the field's description
  const note = document.createElement("p");
  note.id = "field-error"; note.className = "error field-error"; note.setAttribute("aria-hidden", "true");
  note.textContent = $("message").textContent;
  if (el.tagName === "FIELDSET") el.querySelector("legend").after(note); else (el.closest("label") || el).after(note);
  el.setAttribute("aria-describedby", `${el.getAttribute("aria-describedby") || ""} message`.trim());
  // a fieldset of models: a ticked one, the likely culprit, not the first box (threshold) of the list (h116)
  (el.tagName === "FIELDSET" ? el.querySelector("input:checked") || el.querySelector("input") : el).focus();
  return true;
}
function escape(text) { const d = document.createElement("div"); d.textContent = text; return d.innerHTML; }
function plural(n, word) { return `${n} ${word}${n === 1 ? "" : "s"}`; }

// JSON from the server, or {error} when the answer is not JSON (a proxy's page, a dropped connection)
async function call(url, options) {
  try {
    const response = await fetch(url, options);
    const body = await response.json().catch(() => ({ error: `the server answered ${response.status} ${response.statusText}.` }));
    return { ok: response.ok, status: response.status, body };
  } catch (err) { return { ok: false, status: 0, body: { error: `no answer from the server (${err.message}).` } }; }
}

// the button had the focus when it was disabled, and the page lost it (to <body>) until the job ended: a job
// keeps it on the status line, a failure gives it back to the button, results take it to their heading
function finish(text, isError, field) {
  const cancelling = document.activeElement === $("cancel");
  $("bar").hidden = true; $("cancel").hidden = true; $("go").disabled = false; say(text, isError);
  if (cancelling) $("go").focus(); // the Cancel button is hidden: the focus fell to <body>
  if (isError && !flag(field) && document.activeElement === $("status")) $("go").focus();
}

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const data = new FormData(form);
  flag();
  // not `required`: an empty file input matched :invalid from the start, and was announced "invalid entry" at load
  if (!input.files.length) { say("Choose an image to segment.", true); flag("image"); return; }
  if (!data.getAll("models").length) { say("Pick at least one model.", true); flag("models"); return; }
  leave(); // a job the page gave up on (its polls failed) may run yet
  $("go").disabled = true; $("status").focus(); // one job at a time from this page
  $("bar").hidden = false; $("bar").value = 0; say("Uploading…");
  const { ok, body } = await call("/api/segment", { method: "POST", body: data });
  if (!ok) { finish(body.error, true, body.field); return; } // the earlier results stay on the page
  $("results").hidden = true; job = body; ticket += 1; mine = job.id;
  history.pushState(null, "", `#job=${job.id}`); poll(ticket); // a reload finds the job again, Back the one before
});

// a job this page uploaded is cancelled when a new upload replaces it: it held a worker or a place in the queue
// until it ended, for nobody. Not when the page is left: a reload or Back shows the job again (the server drops a
// job nobody asks about); a job of a shared link is the sharer's, and left alone
function leave() {
  if (!job || job.id !== mine || ENDED.includes(job.status)) return;
  mine = null;
  fetch(`/api/jobs/${job.id}`, { method: "DELETE" }).catch(() => {});
}

$("cancel").addEventListener("click", async () => {
  const t = ticket; // not disabled meanwhile: the focus on it would fall to <body>; a second DELETE does no harm
  const { ok, status, body } = await call(`/api/jobs/${job.id}`, { method: "DELETE" });
  if (t !== ticket) return; // the page follows another job now
  if (ok && body.status === "cancelled") { ticket += 1; mine = null; finish("Cancelled."); return; }
  // 202: a running job stops at its next step (after the model call under way, which can be the whole run of a
  // one-chunk image): the page said "Cancelled." at once while the worker stayed busy, and the next upload waited
  if (ok) { job = body; say(CANCELLING); return; } // the polls go on, and end on "cancelled"
  if (status !== 409) say(body.error, true); // 409: it ended meanwhile, and the polls show how
});

// a reloaded page, a shared link or Back shows the job in the address: its results were lost on reload, the job
// still ran; the form is set as that job was, so that the next upload runs what the results show
function jobInHash() { return new URLSearchParams(location.hash.slice(1)).get("job"); }
function load(id) {
  job = { id }; ticket += 1; clearTimeout(expiry);
  $("go").disabled = true; $("bar").hidden = false; $("results").hidden = true; say("Loading the job…");
  poll(ticket, 0, true);
}
if (jobInHash()) load(jobInHash());
window.addEventListener("hashchange", () => {
  const id = jobInHash();
  if (id && (!job || id !== job.id)) load(id);
  else if (!id && job) { // Back to the page before any job: its results went on showing
    job = null; ticket += 1; clearTimeout(expiry); $("results").hidden = true; finish("");
  }
});

function restoreForm() {
  document.querySelectorAll("input[name='models']").forEach((box) => { box.checked = job.models.includes(box.value); });
  $("tta").value = job.tta; $("precision").value = job.precision; $("normalize").value = job.normalize; $("sieve").value = job.sieve;
}

async function poll(t, misses = 0, restore = false) {
  if (t !== ticket) return; // the page follows another job now
  const { ok, status, body } = await call(`/api/jobs/${job.id}`);
  if (t !== ticket) return;
  if (!ok && (status === 0 || status >= 502) && misses < 12) { // a dropped connection or a proxy's hiccup: the job runs on
    say(`No answer from the server; trying again (${misses + 1})…`, true);
    setTimeout(() => poll(t, misses + 1, restore), Math.min(10000, 500 * 2 ** misses)); return;
  }
  if (!ok) { finish(body.error, true); return; }
  job = body;
  if (restore) { restoreForm(); restore = false; }
  $("bar").value = job.progress;
  if (job.status === "failed") { finish(job.error, true); return; }
  // by its Cancel button, another tab, or dropped unpolled from the queue (the error says so)
  if (job.status === "cancelled") { finish(job.error || "Cancelled.", Boolean(job.error)); return; }
  $("cancel").hidden = false;
  if (job.status === "queued") {
    say(`Waiting for a free worker${job.ahead ? ` (${plural(job.ahead, "job")} ahead)` : ""}…`);
    setTimeout(() => poll(t), 1000); return;
  }
  if (job.status !== "done" && job.cancelling) { say(CANCELLING); setTimeout(() => poll(t), 500); return; } // after a reload too
  if (job.status !== "done") {
    const n = job.models.length, i = job.running ?? 0;
    // a one-chunk image reports nothing until its one model call ends: a bar standing at 0% for it read as stuck
    // (h116), so until the model's own part moves the bar is indeterminate and the line names no share
    // progress comes rounded to 3 decimals: the third of three models began at 0.667, over 2/3, and its bar stood
    // at a fixed 67% and the line said 60% before any part of it ran
    const moving = job.progress - i / n > 0.001;
    if (!moving) $("bar").removeAttribute("value");
    say(`Segmenting with ${job.models[i]}${inParentheses([n > 1 ? `model ${i + 1} of ${n}` : "", ...modeParts(i)].filter(Boolean))}…${moving ? ` ${Math.floor(job.progress * 10) * 10}%` : ""}`); // the bar has the rest
    setTimeout(() => poll(t), 500); return;
  }
  // the notes go under the Results heading, where the focus goes: read on from it, they were never reached above it
  finish(`Done${inParentheses(modeParts())}.` + (job.warnings.length ? ` ${plural(job.warnings.length, "note")} under Results.` : ""));
  const following = [$("status"), $("go"), document.body].includes(document.activeElement);
  show();
  if (following) $("results-heading").focus(); // not when the user went on to another control meanwhile
  clearTimeout(expiry); // the server deletes the files then: say so, rather than links whose downloads fail silently
  if (job.expires_in !== undefined) expireAt(t, Date.now() + job.expires_in * 1000);
}

// a timer of over 2^31 ms (a --ttl of 25 days) fired at once: wait in steps
function expireAt(t, at) {
  const left = at - Date.now();
  expiry = setTimeout(() => { if (t !== ticket) return; if (left > 2 ** 31 - 1) expireAt(t, at); else expire(); },
    Math.max(0, Math.min(left, 2 ** 31 - 1)));
}

function expire() {
  job.expired = true;
  if (document.activeElement === $("view-model")) $("status").focus(); // disabled below: the focus fell to <body>
  $("downloads").textContent = "";
  $("view-model").disabled = true; // another model's mask is gone too: the picture broke and the legend stayed
  say("These results have been deleted from the server (it keeps them for a while after a job ends): upload the image again to download them.", true);
}

function show() {
  const models = job.result.models;
  // which upload these are: after a reload or a shared link the file input is empty (h116)
  $("results-heading").textContent = `Results for ${job.name}${job.label_name ? `, scored against ${job.label_name}` : ""}`;
  const select = $("view-model");
  select.innerHTML = models.map((m, i) => `<option value="${i}">${escape(m.model)}</option>`).join(""); // a card's name is text
  // a screen reader said only the option's name: the mask, legend and downloads changed unheard
  select.onchange = () => { const m = models[select.value]; view(m); $("shown").textContent = `Showing ${possessive(m.model)} mask${inWords(m)}.`; };
  $("shown").textContent = "";
  select.disabled = false;
  $("original").src = job.files["original.png"];
  const agree = job.result.agreement_pct; // null: no valid pixel (all nodata)
  $("agreement").textContent = agree === undefined ? "" : agree === null ? "No valid pixel to compare the models on." :
    `Models agree on ${agree}% of pixels.`; // a full stop: read on into the words below, "pixels The share"
  $("agreement-about").textContent = agree === undefined ? "" : agreementAbout(models);
  $("agreement").parentElement.hidden = agree === undefined; // one model, or one of classes
  // the thumbnails' words say what their colours show, as the large picture's do (they only named the model); built
  // as elements: a card's names in an attribute of HTML text could close it
  $("compare").replaceChildren(...models.map((m) => {
    const figure = document.createElement("figure"), img = document.createElement("img"), caption = document.createElement("figcaption");
    img.src = job.files[m.key + "_overlay.png"]; img.alt = `${possessive(m.model)} mask over the image${inWords(m)}`;
    caption.textContent = `${m.model} (${m.seconds.toFixed(1)} s)`;
    figure.append(img, caption);
    return figure;
  }));
  areas(models); iou(job.result.iou);
  $("notes").innerHTML = job.warnings.map((w) => `<li>${escape(w)}</li>`).join("");
  $("notes").hidden = !job.warnings.length;
  if (job.warnings.length) $("results-heading").setAttribute("aria-describedby", "notes");
  else $("results-heading").removeAttribute("aria-describedby");
  const first = Math.max(0, models.findIndex((m) => m.keras)); // a trained model before the baselines it is compared with
  select.value = first; view(models[first]);
  $("results").hidden = false;
}

// "watershed-regions' mask", not "watershed-regions's" (h143)
function possessive(name) { return name.endsWith("s") ? `${name}'` : `${name}'s`; }

// what a model's mask shows, in words: the pictures' alt text and what choosing it in Show announces
function inWords(m) {
  return m.output === "regions" ? ": unlabeled regions, colours only tell neighbouring regions apart" : m.classes.every((c) => c.share_pct === null) ? ": no valid pixel" :
    `: ${m.classes.map((c) => `${c.name} ${c.share_pct}%`).join(", ")}`;
}

// what the agreement counts, and where it cannot mean much: "Models agree on 1.5%" of landcover-unet and threshold
// was a bare number, read as a verdict on one of them (h143)
function agreementAbout(models) {
  const counted = models.filter((m) => m.output !== "regions"), left = models.filter((m) => m.output === "regions");
  const names = (m) => m.classes.map((c) => c.name), list = (xs) => xs.join(", ");
  const parts = [`The share of pixels, valid in every mask, where ${counted.length > 2 ? `all ${counted.length} models` :
    "both models"} name the same class, matched by name` + (left.length ? ` (${list(left.map((m) => m.model))} left out: ` +
    "region colours are not classes)" : "") + "."];
  const lacking = new Map(); // the classes an "other" stands for: the models whose "other" stands for them
  counted.forEach((m) => {
    const lacks = list([...new Set(counted.flatMap(names))].filter((n) => !names(m).includes(n)));
    if (names(m).includes("other") && lacks) lacking.set(lacks, [...(lacking.get(lacks) || []), m.model]);
  });
  lacking.forEach((who, lacks) => parts.push(who.length === 1 ? `${possessive(who[0])} “other” agrees with any class it lacks (${lacks}).` :
    `The “other” of ${list(who)} agrees with any class they lack (${lacks}).`));
  // a class that another model neither has nor covers by an "other" never agrees: its pixels all count against
  counted.forEach((m) => counted.forEach((o) => {
    if (o === m || names(o).includes("other")) return;
    // an "other" of m's that stands for classes of o's is matched by them
    const unmatched = names(m).filter((n) => !names(o).includes(n) && !(n === "other" && names(o).some((x) => !names(m).includes(x))));
    if (unmatched.length) parts.push(`Not meaningful where ${m.model} finds ${list(unmatched)}: ${o.model} has no such ` +
      "class, so those pixels always count as disagreement.");
  }));
  parts.push("It tells how alike the masks are, not which is right" + (job.result.iou ? ": the IoU table below does." : "."));
  return parts.join(" ");
}

function view(m) {
  $("overlay").src = job.files[m.key + "_mask.png"];
  $("overlay").alt = `${possessive(m.model)} mask${inWords(m)}`;
  $("legend").innerHTML = m.output === "regions" ? "unlabeled regions: colours only tell neighbouring regions apart" :
    m.classes.every((c) => c.share_pct === null) ? "no valid pixel: the image is all nodata" :
    m.classes.map((c) => `<span class="legend"><i style="background:${c.color}"></i>${escape(c.name)} ${c.share_pct}%` +
    (c.area_m2 !== null ? ` (${area(c.area_m2)})` : "") + "</span>").join(" ");
  // no GeoJSON for an image without a CRS: GeoJSON coordinates are longitude and latitude
  const files = [["mask GeoTIFF", "_mask.tif"], ["mask for QGIS (zip)", "_mask.zip"], ["GeoPackage", "_polygons.gpkg"], ["GeoJSON", "_polygons.geojson"], ["overlay PNG", "_overlay.png"]]
    .filter(([, suffix]) => job.files[m.key + suffix]);
  if (job.expired) return; // expire() said so
  $("downloads").innerHTML = "Download: " + files.map(([label, suffix]) =>
    `<a href="${job.files[m.key + suffix]}" download aria-label="${m.model} ${label}">${label}</a>`).join(" "); // " ": the links wrap on a phone
}

// m² under a hectare, km² from 100 ha up (the page showed 1253285.93 ha)
function area(m2) { return m2 < 1e4 ? `${Math.round(m2)} m²` : m2 < 1e6 ? `${(m2 / 1e4).toFixed(2)} ha` : `${(m2 / 1e6).toFixed(2)} km²`; }

function areas(models) {
  models = models.filter((m) => m.output !== "regions"); // region colours are not classes
  $("areas").hidden = $("areas-box").hidden = !models.length; // the box too: a tab stop on nothing
  const names = [...new Set(models.flatMap((m) => m.classes.map((c) => c.name)))];
  const cell = (m, n) => { const c = m.classes.find((x) => x.name === n); return c && c.share_pct !== null ? `${c.share_pct}%` : "–"; };
  // row headers: read down a model's column, a screen reader said "11.22%, 0%" without the class
  $("areas").innerHTML = `<caption id="areas-caption">Share of each class, by model</caption><tr><th scope="col">class</th>` +
    models.map((m) => `<th scope="col">${escape(m.model)}</th>`).join("") + "</tr>" +
    names.map((n) => `<tr><th scope="row">${escape(n)}</th>${models.map((m) => `<td>${cell(m, n)}</td>`).join("")}</tr>`).join("");
}

function iou(rows) {
  if (!rows || !rows.length) { $("iou").hidden = $("iou-box").hidden = true; return; }
  const names = [...new Set(rows.flatMap((r) => Object.keys(r.iou)))];
  const fmt = (v) => (v === null || v === undefined ? "–" : v.toFixed(3));
  const from = job.result.label_read_as;
  $("iou").innerHTML = `<caption id="iou-caption">IoU against the label, ${from === "its CLASS_NAMES" ? "classes named by its CLASS_NAMES" :
    `read as ${escape(possessive(from))} classes`}</caption><tr><th scope="col">IoU</th>${rows.map((r) => `<th scope="col">${escape(r.model)}</th>`).join("")}</tr>` +
    names.map((n) => `<tr><th scope="row">${escape(n)}</th>${rows.map((r) => `<td>${fmt(r.iou[n])}</td>`).join("")}</tr>`).join("") +
    `<tr class="mean"><th scope="row">mean IoU</th>${rows.map((r) => `<td>${fmt(r.mean_iou)}</td>`).join("")}</tr>`;
  $("iou").hidden = $("iou-box").hidden = false;
}

form.addEventListener("invalid", () => say(""), true); // the browser says what is wrong with a field: not "Pick…" too
// a screen reader read the slider as "0.6": say it as a percentage
function opacity() { const v = $("opacity").value; $("overlay").style.opacity = v; $("opacity").setAttribute("aria-valuetext", `${Math.round(v * 100)}%`); }
$("opacity").addEventListener("input", opacity);
opacity();
