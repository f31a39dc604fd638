// geoseg page: upload, poll the job, show and compare the results. No build step.
const $ = (id) => document.getElementById(id);
const form = $("upload"), drop = $("drop"), input = $("image");
let job = null;

["dragenter", "dragover"].forEach((e) => drop.addEventListener(e, (ev) => { ev.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((e) => drop.addEventListener(e, (ev) => { ev.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (ev) => { input.files = ev.dataTransfer.files; showChosen(); });
input.addEventListener("change", showChosen);
function showChosen() { $("chosen").textContent = input.files.length ? input.files[0].name : ""; }

function modeText() {
  const keras = !(job.result && job.result.models && !job.result.models.some((m) => m.keras)); // baselines ignore both
  const parts = keras ? [job.tta !== "none" ? `${job.tta} TTA` : "", job.precision !== "float32" ? job.precision : ""] : [];
  if (job.sieve > 0) parts.push(`regions of ${job.sieve} px or more`);
  return parts.filter(Boolean).length ? ` (${parts.filter(Boolean).join(", ")})` : "";
}

function say(text, isError) { $("message").textContent = text; $("message").className = isError ? "error" : ""; }

// JSON from the server, or {error} when the answer is not JSON (a proxy's page, a dropped connection)
async function call(url, options) {
  try {
    const response = await fetch(url, options);
    const body = await response.json().catch(() => ({ error: `the server answered ${response.status} ${response.statusText}.` }));
    return { ok: response.ok, body };
  } catch (err) { return { ok: false, body: { error: `no answer from the server (${err.message}).` } }; }
}

function finish(text, isError) { $("bar").hidden = true; $("go").disabled = false; say(text, isError); }

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const data = new FormData(form);
  if (!data.getAll("models").length) { say("Pick at least one model.", true); return; }
  $("go").disabled = true; // one job at a time from this page
  $("results").hidden = true; $("bar").hidden = false; $("bar").value = 0; say("Uploading…");
  const { ok, body } = await call("/api/segment", { method: "POST", body: data });
  if (!ok) { finish(body.error, true); return; }
  job = body; poll();
});

async function poll() {
  const { ok, body } = await call(`/api/jobs/${job.id}`);
  if (!ok) { finish(body.error, true); return; }
  job = body;
  $("bar").value = job.progress;
  if (job.status === "failed") { finish(job.error, true); return; }
  if (job.status !== "done") {
    const n = job.models.length, i = Math.min(n - 1, Math.floor(job.progress * n));
    say(`Segmenting with ${job.models[i]}${n > 1 ? ` (model ${i + 1} of ${n})` : ""}${modeText()}… ${Math.round(job.progress * 100)}%`);
    setTimeout(poll, 500); return;
  }
  finish(`Done${modeText()}.` + (job.warnings.length ? ` Note: ${job.warnings.join(" ")}` : "")); show();
}

function show() {
  const models = job.result.models;
  const select = $("view-model");
  select.innerHTML = models.map((m, i) => `<option value="${i}">${m.model}</option>`).join("");
  select.onchange = () => view(models[select.value]);
  $("original").src = job.files["original.png"];
  $("agreement").textContent = job.result.agreement_pct !== undefined ? `Models agree on ${job.result.agreement_pct}% of pixels` : "";
  $("compare").innerHTML = models.map((m) => `<figure><img src="${job.files[m.key + "_overlay.png"]}" alt="${m.model}">
    <figcaption>${m.model} (${m.seconds.toFixed(1)} s)</figcaption></figure>`).join("");
  areas(models); iou(job.result.iou);
  view(models[0]);
  $("results").hidden = false;
}

function view(m) {
  $("overlay").src = job.files[m.key + "_mask.png"];
  $("legend").innerHTML = m.output === "regions" ? "unlabeled regions: colours only tell neighbouring regions apart" :
    m.classes.map((c) => `<span class="legend"><i style="background:${c.color}"></i>${c.name} ${c.share_pct}%` +
    (c.area_m2 !== null ? ` (${(c.area_m2 / 1e4).toFixed(2)} ha)` : "") + "</span>").join(" ");
  // no GeoJSON for an image without a CRS: GeoJSON coordinates are longitude and latitude
  const files = [["mask GeoTIFF", "_mask.tif"], ["GeoPackage", "_polygons.gpkg"], ["GeoJSON", "_polygons.geojson"], ["overlay PNG", "_overlay.png"]]
    .filter(([, suffix]) => job.files[m.key + suffix]);
  $("downloads").innerHTML = "Download: " + files.map(([label, suffix]) =>
    `<a href="${job.files[m.key + suffix]}" download>${label}</a>`).join("");
}

function areas(models) {
  models = models.filter((m) => m.output !== "regions"); // region colours are not classes
  $("areas").hidden = !models.length;
  const names = [...new Set(models.flatMap((m) => m.classes.map((c) => c.name)))];
  const cell = (m, n) => { const c = m.classes.find((x) => x.name === n); return c ? `${c.share_pct}%` : "–"; };
  $("areas").innerHTML = `<tr><th>class</th>${models.map((m) => `<th>${m.model}</th>`).join("")}</tr>` +
    names.map((n) => `<tr><td>${n}</td>${models.map((m) => `<td>${cell(m, n)}</td>`).join("")}</tr>`).join("");
}

function iou(rows) {
  if (!rows || !rows.length) { $("iou").hidden = true; return; }
  const names = [...new Set(rows.flatMap((r) => Object.keys(r.iou)))];
  const fmt = (v) => (v === null || v === undefined ? "–" : v.toFixed(3));
  $("iou").innerHTML = `<tr><th>IoU</th>${rows.map((r) => `<th>${r.model}</th>`).join("")}</tr>` +
    names.map((n) => `<tr><td>${n}</td>${rows.map((r) => `<td>${fmt(r.iou[n])}</td>`).join("")}</tr>`).join("") +
    `<tr><th>mean IoU</th>${rows.map((r) => `<th>${fmt(r.mean_iou)}</th>`).join("")}</tr>`;
  $("iou").hidden = false;
}

$("opacity").addEventListener("input", (ev) => { $("overlay").style.opacity = ev.target.value; });
$("overlay").style.opacity = $("opacity").value;
