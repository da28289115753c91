// lookalike web page: upload a photo (or pick a product) and browse products that look alike.
// Plain JavaScript, no dependencies; every text from the API goes in with textContent.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const els = {
    form: $("search-form"), photo: $("photo"), camera: $("camera"),
    choose: $("choose-photo"), take: $("take-photo"), dropzone: $("dropzone"),
    preview: $("preview"), message: $("message"), limits: $("limits"),
    results: $("results"), resultsSection: $("results-section"),
    resultsTitle: $("results-title"), resultsSubtitle: $("results-subtitle"),
    queryThumb: $("query-thumb"), random: $("random-items"), shuffle: $("shuffle"),
    info: $("catalogue-info"), clear: $("clear-filters"),
    filtersPanel: $("filters-panel"), filterCount: $("filter-count"),
    category: $("f-category"), gender: $("f-gender"), colour: $("f-colour"),
    priceMin: $("f-price-min"), priceMax: $("f-price-max"), k: $("f-k"),
    words: $("text-query"), wordsOnly: $("words-only"),
  };
  const state = {
    maxUploadBytes: 10 * 1024 * 1024,
    lastFile: null,          // the photo searched last (re-run when filters change)
    lastItem: null,          // the item whose "more like this" is shown
    previewUrl: null,
    literal: new Set(),      // understood columns the shopper removed: their words stay words
    keepType: true,          // keep the photo's category (its chip can be removed)
    request: 0,              // newer requests win over slower older ones
  };

  // ---- API ------------------------------------------------------------------------------------
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
      e.code = error ? error.code : null;
      e.reason = error ? error.reason : null;
      throw e;
    }
    return body;
  }

  function filterParams() {
    const params = new URLSearchParams();
    for (const name of ["category", "gender", "colour"]) {
      if (els[name].value) params.append(name, els[name].value);
    }
    if (els.priceMin.value !== "") params.append("price_min", els.priceMin.value);
    if (els.priceMax.value !== "") params.append("price_max", els.priceMax.value);
    params.append("k", els.k.value || "5");
    return params;
  }

  // What the words were understood as: one removable chip per attribute. Removing a chip re-runs
  // the query with that column in `literal` (its words go to the text model instead), or, for
  // the category kept from the photo, with keep_type=false.
  function understanding(params) {
    for (const column of state.literal) params.append("literal", column);
    if (!state.keepType) params.append("keep_type", "false");
  }

  function renderUnderstood(body) {
    const box = $("understood");
    if (!box) return;
    box.replaceChildren();
    const chips = [];
    for (const [column, values] of Object.entries(body.understood || {})) {
      chips.push([`${column}: ${values.join(" or ")}`, () => state.literal.add(column)]);
    }
    for (const [column, values] of Object.entries(body.kept || {})) {
      chips.push([`${column}: ${values.join(" or ")} (from the photo)`, () => { state.keepType = false; }]);
    }
    if (!chips.length) { box.hidden = true; return; }
    const label = document.createElement("span");
    label.className = "muted";
    label.textContent = "Understood:";
    box.appendChild(label);
    for (const [text, remove] of chips) {
      const chip = document.createElement("button");
      chip.type = "button";
      chip.className = "chip";
      chip.textContent = text + " ×";
      chip.setAttribute("aria-label", `Remove ${text}`);
      chip.addEventListener("click", () => { remove(); rerun(); });
      box.appendChild(chip);
    }
    if (body.free_text) {
      const rest = document.createElement("span");
      rest.className = "muted free-text";
      rest.textContent = `words: “${body.free_text}”`;
      box.appendChild(rest);
    }
    box.hidden = false;
  }

  // The words box: words alone, or words refining the photo / the product shown.
  function words() {
    return els.words ? els.words.value.trim() : "";
  }

  function quoted(text) {
    return text ? ` “${text}”` : "";
  }

  function showWordsOnly() {
    if (els.wordsOnly) els.wordsOnly.hidden = !(words() && (state.lastFile || state.lastItem));
  }

  // ---- messages -------------------------------------------------------------------------------
  function say(text, kind) {
    els.message.textContent = text || "";
    els.message.className = "message" + (kind ? " " + kind : "");
  }

  function friendlyUploadError(err) {
    if (err.status === 413) {
      return err.reason === "too-large"
        ? "That image has too many pixels to process. Try a smaller photo."
        : `That file is too large. The limit is ${formatBytes(state.maxUploadBytes)}.`;
    }
    if (err.reason === "not-an-image") return "That file is not an image. Choose a JPEG, PNG or WebP photo.";
    if (err.reason === "truncated") return "That image is incomplete (the file is cut short). Try another copy.";
    if (err.reason === "unsupported") return err.message.replace(/^uploaded image: /, "") + ".";
    if (err.reason === "empty") return "That file is empty.";
    return err.message;
  }

  function formatBytes(n) {
    return n >= 1048576 ? `${Math.round(n / 104857.6) / 10} MB` : `${Math.round(n / 1024)} KB`;
  }

  // ---- rendering ------------------------------------------------------------------------------
  function card(item, options) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "card";
    button.dataset.id = item.id;
    const name = item.title || `Item ${item.id}`;
    button.setAttribute("aria-label", `${name}${item.category ? ", " + item.category : ""}` +
      (options.score ? `, similarity ${Math.round(item.score * 100)}%` : "") + ". Show more like this.");

    const img = document.createElement("img");
    img.className = "thumb";
    img.src = item.image_url;
    img.alt = name;
    img.loading = "lazy";
    img.decoding = "async";
    button.appendChild(img);

    const body = document.createElement("span");
    body.className = "body";
    if (options.badge) {
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = options.badge;
      button.appendChild(badge);
    }
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
    if (options.score) {
      const score = document.createElement("span");
      score.className = "score";
      const meter = document.createElement("meter");
      meter.min = 0; meter.max = 1; meter.low = 0.4; meter.high = 0.7; meter.optimum = 1;
      meter.value = Math.max(0, item.score);
      meter.setAttribute("aria-hidden", "true");
      const value = document.createElement("span");
      value.className = "score-value";
      value.textContent = item.score.toFixed(3);
      score.append(meter, value);
      body.appendChild(score);
    }
    button.appendChild(body);
    button.addEventListener("click", () => showSimilar(item));
    li.appendChild(button);
    return li;
  }

  function renderResults(results, heading, subtitle, thumbUrl, thumbAlt) {
    els.resultsTitle.textContent = heading;
    els.resultsSubtitle.textContent = subtitle;
    if (thumbUrl) {
      els.queryThumb.src = thumbUrl;
      els.queryThumb.alt = thumbAlt || "";
      els.queryThumb.hidden = false;
    } else {
      els.queryThumb.hidden = true;
    }
    els.results.replaceChildren();
    if (!results.length) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = "No products match these filters. Try clearing some.";
      els.results.appendChild(li);
      return;
    }
    results.forEach((r, i) => els.results.appendChild(card(r, { score: true, badge: i === 0 ? "Best match" : null })));
  }

  // ---- search by photo ------------------------------------------------------------------------
  async function searchPhoto(file) {
    if (!file) return;
    if (file.size > state.maxUploadBytes) {
      say(`That file is ${formatBytes(file.size)}; the limit is ${formatBytes(state.maxUploadBytes)}.`, "error");
      return;
    }
    if (file.type && !file.type.startsWith("image/")) {
      say("That file is not an image. Choose a JPEG, PNG or WebP photo.", "error");
      return;
    }
    state.lastFile = file;
    state.lastItem = null;
    if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
    state.previewUrl = URL.createObjectURL(file);
    els.preview.src = state.previewUrl;
    els.preview.alt = "Your photo: " + (file.name || "uploaded image");
    els.preview.hidden = false;
    if (location.hash) history.replaceState(null, "", location.pathname + location.search);

    const ticket = ++state.request;
    say("Looking for similar products…", "busy");
    const form = new FormData();
    form.append("image", file, file.name || "photo");
    const text = words();
    if (text) form.append("text", text);
    const extra = filterParams();
    understanding(extra);
    for (const [name, value] of extra) form.append(name, value);
    showWordsOnly();
    try {
      const body = await api("/v1/search", { method: "POST", body: form });
      if (ticket !== state.request) return;
      say("");
      renderResults(body.results, text ? `Like your photo,${quoted(text)}` : "Most like your photo",
        `${body.results.length} product${body.results.length === 1 ? "" : "s"}, most similar first.`,
        state.previewUrl, "Your photo");
      renderUnderstood(body);
      focusResults();
    } catch (err) {
      if (ticket !== state.request) return;
      say(friendlyUploadError(err), "error");
    }
  }

  // ---- more like this ---------------------------------------------------------------------------
  async function showSimilar(item, fromHistory) {
    state.lastItem = item;
    state.lastFile = null;
    els.preview.hidden = true;  // the photo no longer drives the results
    if (!fromHistory) history.pushState({ item }, "", "#item=" + encodeURIComponent(item.id));
    const ticket = ++state.request;
    say("Finding more like this…", "busy");
    const params = filterParams();
    const text = words();
    if (text) params.append("text", text);
    understanding(params);
    showWordsOnly();
    try {
      const body = await api(`/v1/items/${encodeURIComponent(item.id)}/similar?${params}`);
      if (ticket !== state.request) return;
      say("");
      const name = item.title || `item ${item.id}`;
      renderResults(body.results, `More like: ${name}${text ? "," + quoted(text) : ""}`,
        [item.category, `${body.results.length} similar products`].filter(Boolean).join(" · "),
        item.image_url, name);
      renderUnderstood(body);
      focusResults();
    } catch (err) {
      if (ticket !== state.request) return;
      say(err.status === 404 ? "That product is no longer in the catalogue." : err.message, "error");
    }
  }

  // ---- words alone ----------------------------------------------------------------------------
  async function searchWords() {
    const text = words();
    if (!text) {
      say("Type a few words first, e.g. “red running shoes”, or choose a photo.", "error");
      return;
    }
    state.lastFile = null;
    state.lastItem = null;
    els.preview.hidden = true;
    if (location.hash) history.replaceState(null, "", location.pathname + location.search);
    showWordsOnly();
    const ticket = ++state.request;
    say("Searching…", "busy");
    const form = new FormData();
    form.append("text", text);
    const extra = filterParams();
    understanding(extra);
    for (const [name, value] of extra) form.append(name, value);
    try {
      const body = await api("/v1/search", { method: "POST", body: form });
      if (ticket !== state.request) return;
      say("");
      renderResults(body.results, `Matching${quoted(text)}`,
        `${body.results.length} product${body.results.length === 1 ? "" : "s"}, best match first.`);
      renderUnderstood(body);
      focusResults();
    } catch (err) {
      if (ticket !== state.request) return;
      say(err.message, "error");
    }
  }

  function focusResults() {
    els.resultsSection.focus({ preventScroll: true });
    els.resultsSection.scrollIntoView({ behavior: "smooth", block: "start" });
  }

  async function openFromHash() {
    const match = /^#item=(.+)$/.exec(location.hash);
    if (!match) return;
    const id = decodeURIComponent(match[1]);
    try {
      const item = await api(`/v1/items/${encodeURIComponent(id)}`);
      showSimilar(item, true);
    } catch (err) {
      say(err.status === 404 ? "That product is not in the catalogue." : err.message, "error");
    }
  }

  // ---- browsing -------------------------------------------------------------------------------
  async function loadRandom() {
    try {
      const body = await api("/v1/items?random=10");
      els.random.replaceChildren(...body.items.map((item) => card(item, {})));
    } catch (err) {
      els.random.replaceChildren();
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = "Could not load products: " + err.message;
      els.random.appendChild(li);
    }
  }

  async function loadCatalogue() {
    try {
      const summary = await api("/v1/catalogue");
      state.maxUploadBytes = summary.max_upload_bytes;
      els.limits.textContent = `JPEG, PNG, WebP, GIF, BMP or TIFF, up to ${formatBytes(summary.max_upload_bytes)}.`;
      for (const name of ["category", "gender", "colour"]) {
        const select = els[name];
        for (const value of summary.filters[name] || []) {
          const option = document.createElement("option");
          option.value = value;
          option.textContent = value;
          select.appendChild(option);
        }
        select.closest("label").hidden = !(summary.filters[name] || []).length;
      }
      const hasPrice = Array.isArray(summary.filters.price);
      $("price-min-label").hidden = !hasPrice;
      $("price-max-label").hidden = !hasPrice;
      if (hasPrice) {
        els.priceMin.placeholder = String(summary.filters.price[0]);
        els.priceMax.placeholder = String(summary.filters.price[1]);
      }
      const index = summary.index;
      els.info.textContent = `${summary.items.toLocaleString()} products` +
        (index ? ` · ${index.embedder} embeddings · ${index.kind} index` : " · no index yet");
      if (!index) say("The catalogue has no index yet, so search is not available.", "warn");
    } catch (err) {
      say("Could not load the catalogue: " + err.message, "error");
    }
  }

  // ---- events ---------------------------------------------------------------------------------
  els.choose.addEventListener("click", () => els.photo.click());
  els.take.addEventListener("click", () => els.camera.click());
  for (const input of [els.photo, els.camera]) {
    input.addEventListener("change", () => {
      if (input.files && input.files[0]) searchPhoto(input.files[0]);
      input.value = "";  // choosing the same file again still searches
    });
  }

  ["dragenter", "dragover"].forEach((type) => els.dropzone.addEventListener(type, (event) => {
    event.preventDefault();
    els.dropzone.classList.add("dragging");
  }));
  ["dragleave", "drop"].forEach((type) => els.dropzone.addEventListener(type, (event) => {
    event.preventDefault();
    els.dropzone.classList.remove("dragging");
  }));
  els.dropzone.addEventListener("drop", (event) => {
    const files = event.dataTransfer ? event.dataTransfer.files : null;
    if (files && files.length) searchPhoto(files[0]);
    else say("Drop an image file (not a link or text).", "error");
  });
  // A file dropped next to the drop zone must not make the browser navigate away.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  document.addEventListener("paste", (event) => {
    const items = event.clipboardData ? Array.from(event.clipboardData.files) : [];
    const image = items.find((f) => f.type.startsWith("image/"));
    if (image) searchPhoto(image);
  });

  function updateFilterCount() {
    const active = ["category", "gender", "colour"].filter((n) => els[n].value).length +
      (els.priceMin.value !== "" || els.priceMax.value !== "" ? 1 : 0);
    els.filterCount.textContent = active ? `(${active} active)` : "(optional)";
  }

  function rerun() {
    updateFilterCount();
    if (state.lastFile) searchPhoto(state.lastFile);
    else if (state.lastItem) showSimilar(state.lastItem, true);
    else if (words()) searchWords();
  }
  for (const select of [els.category, els.gender, els.colour, els.k]) select.addEventListener("change", rerun);
  for (const input of [els.priceMin, els.priceMax]) input.addEventListener("change", rerun);
  els.form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!state.lastFile && !state.lastItem && !words()) searchWords();  // says what to type
    else rerun();
  });
  els.clear.addEventListener("click", () => {
    for (const select of [els.category, els.gender, els.colour]) select.value = "";
    els.priceMin.value = ""; els.priceMax.value = "";
    rerun();
  });
  if (els.words) {
    // The clear (x) of the search box: back to the photo / product alone.
    els.words.addEventListener("search", () => { if (!words()) rerun(); });
    els.words.addEventListener("input", () => {
      state.literal.clear();  // new words: understand them afresh
      state.keepType = true;
      showWordsOnly();
    });
  }
  if (els.wordsOnly) els.wordsOnly.addEventListener("click", searchWords);
  els.shuffle.addEventListener("click", loadRandom);
  // Back/Forward between products, and links or other scripts that set "#item=<id>".
  window.addEventListener("hashchange", () => {
    if (state.lastItem && location.hash === "#item=" + encodeURIComponent(state.lastItem.id)) return;
    openFromHash();
  });

  // Filters start open where there is room for them, folded on phones.
  els.filtersPanel.open = window.matchMedia("(min-width: 700px)").matches;
  loadCatalogue();
  loadRandom();
  openFromHash();
})();
