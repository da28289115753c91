// lookalike page code for personal picks and shop-the-look.
// Include after app.js:  <script src="/static/personal.js" defer></script>
//
// "Picked for you": the ids of products viewed in THIS browser are kept in localStorage only
// (key "lookalike.viewed", the last 30, never sent anywhere but as the history of
// POST /v1/recommend). The strip fills the page's #picked-for-you section.
// "Shop the look": a scene photo is sent to POST /v1/look; its regions are drawn as numbered
// boxes over the photo, with the products found for each box underneath. The section is
// #shop-the-look when the page has one, otherwise it is created after #picked-for-you.
// Plain JavaScript, no dependencies; every text from the API goes in with textContent; box
// positions are set through element.style (CSSOM), which the page's CSP allows.
"use strict";

(function () {
  const STORE_KEY = "lookalike.viewed";
  const MAX_VIEWED = 30;
  const $ = (id) => document.getElementById(id);

  // ---- the browser-side history ----------------------------------------------------------------
  function viewed() {
    try {
      const ids = JSON.parse(localStorage.getItem(STORE_KEY) || "[]");
      return Array.isArray(ids) ? ids.filter((id) => typeof id === "string" && id) : [];
    } catch (err) {
      return [];  // storage disabled or garbage: behave as a new visitor
    }
  }

  function remember(ids) {
    try {
      if (ids.length) localStorage.setItem(STORE_KEY, JSON.stringify(ids.slice(-MAX_VIEWED)));
      else localStorage.removeItem(STORE_KEY);
    } catch (err) { /* private mode: nothing is kept, nothing breaks */ }
  }

  function noteView(id) {
    if (!id) return;
    const ids = viewed().filter((other) => other !== id);
    ids.push(id);
    remember(ids);
    schedulePicks();
  }

  // ---- API --------------------------------------------------------------------------------------
  async function api(path, options) {
    let response;
    try {
      response = await fetch(path, Object.assign({ headers: { Accept: "application/json" } }, options));
    } catch (err) {
      throw new Error("The service cannot be reached.");
    }
    let body = null;
    try { body = await response.json(); } catch (err) { body = null; }
    if (!response.ok) {
      const e = new Error(body && body.error ? body.error.message : `The service answered ${response.status}.`);
      e.status = response.status;
      throw e;
    }
    return body;
  }

  function productCard(item) {
    const li = document.createElement("li");
    const link = document.createElement("a");
    link.className = "card";
    link.href = "#item=" + encodeURIComponent(item.id);  // app.js shows "more like this"
    link.dataset.id = item.id;
    const name = item.title || `Item ${item.id}`;
    link.setAttribute("aria-label", `${name}${item.category ? ", " + item.category : ""}. Show more like this.`);
    const img = document.createElement("img");
    img.className = "thumb";
    img.src = item.image_url;
    img.alt = name;
    img.loading = "lazy";
    const body = document.createElement("span");
    body.className = "body";
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = name;
    body.appendChild(title);
    if (item.category) {
      const category = document.createElement("span");
      category.className = "category";
      category.textContent = item.category;
      body.appendChild(category);
    }
    link.append(img, body);
    li.appendChild(link);
    return li;
  }

  // ---- picked for you ---------------------------------------------------------------------------
  const picked = { section: $("picked-for-you"), list: $("picked-items"), timer: null, ticket: 0 };
  if (picked.list) picked.list.classList.add("grid");  // laid out like the other product lists

  function schedulePicks() {
    clearTimeout(picked.timer);
    picked.timer = setTimeout(loadPicks, 300);  // several views in a row: one request
  }

  function ensureClearButton() {
    if (!picked.section || $("clear-viewed")) return;
    const note = document.createElement("p");
    note.className = "small muted";
    note.textContent = "Based on what you viewed in this browser (kept on this device only). ";
    const clear = document.createElement("button");
    clear.type = "button";
    clear.id = "clear-viewed";
    clear.className = "button link";
    clear.textContent = "Forget what I viewed";
    clear.addEventListener("click", () => { remember([]); picked.section.hidden = true; });
    note.appendChild(clear);
    picked.section.appendChild(note);
  }

  async function loadPicks(retried) {
    if (!picked.section || !picked.list) return;
    const history = viewed();
    if (!history.length) { picked.section.hidden = true; return; }
    const ticket = ++picked.ticket;
    try {
      const body = await api("/v1/recommend", {
        method: "POST",
        headers: { Accept: "application/json", "Content-Type": "application/json" },
        body: JSON.stringify({ history: history, k: 10, method: "centroid", diversity: 0.2 }),
      });
      if (ticket !== picked.ticket) return;
      picked.list.replaceChildren(...body.results.map(productCard));
      ensureClearButton();
      picked.section.hidden = body.results.length === 0;
    } catch (err) {
      if (err.status === 404 && !retried) {
        // Some viewed products left the catalogue: the message names them; forget those.
        const gone = history.filter((id) => err.message.includes(`'${id}'`));
        remember(history.filter((id) => !gone.includes(id)));
        if (gone.length) return loadPicks(true);
      }
      picked.section.hidden = true;  // picks are a bonus: never an error on the page
    }
  }

  // Views: a click on any product card, and "#item=ID" pages (links, back/forward).
  document.addEventListener("click", (event) => {
    const card = event.target.closest && event.target.closest(".card[data-id]");
    if (card && !card.closest("#picked-for-you")) noteView(card.dataset.id);
  });
  function noteHash() {
    const match = /^#item=(.+)$/.exec(location.hash);
    if (match) noteView(decodeURIComponent(match[1]));
  }
  window.addEventListener("hashchange", noteHash);

  // ---- shop the look ----------------------------------------------------------------------------
  function lookSection() {
    let section = $("shop-the-look");
    if (section) return section;
    section = document.createElement("section");
    section.id = "shop-the-look";
    section.className = "panel";
    section.setAttribute("aria-labelledby", "look-title");
    const title = document.createElement("h2");
    title.id = "look-title";
    title.textContent = "Shop the look";
    const hint = document.createElement("p");
    hint.className = "small muted";
    hint.textContent = "Upload a photo of a scene or an outfit: we mark what looks like our products and show them.";
    const label = document.createElement("label");
    label.className = "button";
    label.textContent = "Choose a scene photo";
    const input = document.createElement("input");
    input.type = "file";
    input.accept = "image/*";
    input.id = "look-photo";
    input.className = "visually-hidden";
    label.appendChild(input);
    const status = document.createElement("p");
    status.id = "look-message";
    status.className = "message";
    status.setAttribute("role", "status");
    status.setAttribute("aria-live", "polite");
    const stage = document.createElement("div");
    stage.id = "look-stage";
    const regions = document.createElement("ol");
    regions.id = "look-regions";
    regions.className = "look-regions";
    section.append(title, hint, label, status, stage, regions);
    const after = $("picked-for-you") || $("results-section");
    if (after && after.parentNode) after.parentNode.insertBefore(section, after.nextSibling);
    else document.body.appendChild(section);
    return section;
  }

  function drawScene(url, found) {
    const stage = $("look-stage");
    stage.replaceChildren();
    Object.assign(stage.style, { position: "relative", display: "inline-block", maxWidth: "100%" });
    const img = document.createElement("img");
    img.src = url;
    img.alt = "Your scene photo";
    Object.assign(img.style, { display: "block", maxWidth: "100%", height: "auto" });
    stage.appendChild(img);
    const { width, height } = found.scene;  // boxes are in the photo's own pixels
    found.regions.forEach((region, n) => {
      const [x0, y0, x1, y1] = region.box;
      const box = document.createElement("div");
      box.className = "look-box";
      box.setAttribute("aria-hidden", "true");
      Object.assign(box.style, {
        position: "absolute", boxSizing: "border-box", border: "3px solid #e0115f",
        borderRadius: "4px", pointerEvents: "none",
        left: `${(100 * x0) / width}%`, top: `${(100 * y0) / height}%`,
        width: `${(100 * (x1 - x0)) / width}%`, height: `${(100 * (y1 - y0)) / height}%`,
      });
      const tag = document.createElement("span");
      tag.textContent = String(n + 1);
      Object.assign(tag.style, {
        position: "absolute", top: "-3px", left: "-3px", background: "#e0115f", color: "#fff",
        font: "700 12px/18px sans-serif", padding: "0 6px", borderRadius: "4px 0 4px 0",
      });
      box.appendChild(tag);
      stage.appendChild(box);
    });
    const list = $("look-regions");
    list.replaceChildren(...found.regions.map((region, n) => {
      const li = document.createElement("li");
      const heading = document.createElement("h3");
      heading.className = "small";
      heading.textContent = `Region ${n + 1}`;
      const strip = document.createElement("ol");
      strip.className = "grid";  // the page's product grid (style.css has no strip style)
      strip.replaceChildren(...region.items.map(productCard));
      li.append(heading, strip);
      return li;
    }));
  }

  async function shopTheLook(file) {
    const status = $("look-message");
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      status.textContent = "That file is not an image.";
      return;
    }
    const url = URL.createObjectURL(file);
    const form = new FormData();
    form.append("image", file, file.name || "scene");
    const history = viewed();
    if (history.length) form.append("history", history.slice(-20).join(","));
    form.append("top_regions", "4");
    form.append("k", "4");
    status.textContent = "Looking for products in your photo…";
    try {
      const found = await api("/v1/look", { method: "POST", body: form });
      status.textContent = found.regions.length
        ? `${found.regions.length} regions, ranked ${found.mode === "history" ? "by what you viewed" : "by how product-like they look"}.`
        : "Nothing in this photo looks like our products.";
      drawScene(url, found);
    } catch (err) {
      status.textContent = err.message;
    }
  }

  function start() {
    noteHash();  // a shared "#item=ID" link counts as a view too
    loadPicks();
    const section = lookSection();
    const input = section.querySelector("#look-photo");
    if (input) input.addEventListener("change", () => shopTheLook(input.files && input.files[0]));
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
}());
