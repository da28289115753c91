// lookalike page, beyond the photo: a "browse" view of the catalogue's clusters (rows of
// thumbnails; a click starts more-like-this). The words box beside the upload lives in app.js.
// Plain JavaScript, no dependencies; every text from the API goes in with textContent.
// It works beside app.js without touching its state: more-like-this is started by navigating to
// "#item=<id>", which app.js already handles.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);

  async function api(path, options) {
    let response;
    try {
      response = await fetch(path, Object.assign({ headers: { Accept: "application/json" } }, options));
    } catch (err) {
      throw new Error("The service cannot be reached. Check your connection and try again.");
    }
    let body = null;
    try { body = await response.json(); } catch (err) { body = null; }
    if (!response.ok) {
      const error = body && body.error ? body.error : null;
      const e = new Error(error ? error.message : `The service answered ${response.status}.`);
      e.status = response.status;
      throw e;
    }
    return body;
  }

  function moreLikeThis(id) {
    location.hash = "#item=" + encodeURIComponent(id);  // app.js shows more like this
  }

  function thumbCard(item, score) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "card";
    button.dataset.id = item.id;
    const name = item.title || `Item ${item.id}`;
    button.setAttribute("aria-label", `${name}${item.category ? ", " + item.category : ""}. Show more like this.`);
    const img = document.createElement("img");
    img.className = "thumb";
    img.src = item.image_url;
    img.alt = name;
    img.loading = "lazy";
    img.decoding = "async";
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
    if (typeof score === "number") {
      const value = document.createElement("span");
      value.className = "score-value";
      value.textContent = score.toFixed(3);
      body.appendChild(value);
    }
    button.append(img, body);
    button.addEventListener("click", () => moreLikeThis(item.id));
    li.appendChild(button);
    return li;
  }

  // ---- browse the clusters --------------------------------------------------------------------
  function browseSection() {
    let section = $("clusters");
    if (section) return section;
    section = document.createElement("section");
    section.id = "clusters";
    section.className = "panel";
    section.setAttribute("aria-labelledby", "clusters-title");
    const head = document.createElement("div");
    head.className = "section-head";
    const h2 = document.createElement("h2");
    h2.id = "clusters-title";
    h2.textContent = "Browse the catalogue by look";
    head.appendChild(h2);
    const rows = document.createElement("div");
    rows.id = "cluster-rows";
    section.append(head, rows);
    const main = document.querySelector("main");
    if (main) main.appendChild(section);
    return section;
  }

  async function loadClusters() {
    let body;
    try {
      body = await api("/v1/clusters?per_cluster=8&limit=12");
    } catch (err) {
      return;  // the service cannot say: the view stays away
    }
    if (!body.clusters || !body.clusters.length) return;  // no clusters saved yet
    const section = browseSection();
    const rows = $("cluster-rows");
    rows.replaceChildren();
    for (const cluster of body.clusters) {
      const heading = document.createElement("h3");
      heading.className = "small";
      heading.textContent = `${cluster.label || "Cluster " + cluster.cluster} · ${cluster.size.toLocaleString()} products`;
      const strip = document.createElement("ol");
      strip.className = "grid compact";
      strip.setAttribute("aria-label", heading.textContent);
      for (const item of cluster.items) strip.appendChild(thumbCard(item));
      rows.append(heading, strip);
    }
    section.hidden = false;
  }

  function start() {
    loadClusters();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
