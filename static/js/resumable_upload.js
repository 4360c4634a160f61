/* Resumable, chunked uploads from the browser (the API's /api/v1/uploads/, docs/api.md):
   a form with data-resumable-upload and a file input. The file's SHA-256 is computed in
   slices (never the whole file in memory), an unfinished upload of the same file is
   resumed, chunks are PATCHed at Upload-Offset, and after a network break the page asks the
   server for its offset and goes on from there. A progress bar shows both phases. */
(function () {
  "use strict";

  // --- SHA-256, incremental (FIPS 180-4); crypto.subtle only digests a whole buffer. ---
  const K = new Uint32Array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2]);
  const ror = (x, n) => (x >>> n) | (x << (32 - n));

  function Sha256() {
    this.h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                              0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
    this.w = new Uint32Array(64);
    this.buf = new Uint8Array(64);
    this.used = 0;
    this.total = 0;
  }
  Sha256.prototype.block = function (d, o) {
    const w = this.w, h = this.h;
    for (let t = 0; t < 16; t++) {
      w[t] = (d[o + 4 * t] << 24) | (d[o + 4 * t + 1] << 16) | (d[o + 4 * t + 2] << 8) | d[o + 4 * t + 3];
    }
    for (let t = 16; t < 64; t++) {
      const a = w[t - 15], b = w[t - 2];
      w[t] = w[t - 16] + (ror(a, 7) ^ ror(a, 18) ^ (a >>> 3)) + w[t - 7] + (ror(b, 17) ^ ror(b, 19) ^ (b >>> 10));
    }
    let a = h[0], b = h[1], c = h[2], dd = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (let t = 0; t < 64; t++) {
      const t1 = (hh + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + K[t] + w[t]) >>> 0;
      const t2 = ((ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) >>> 0;
      hh = g; g = f; f = e; e = (dd + t1) >>> 0; dd = c; c = b; b = a; a = (t1 + t2) >>> 0;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += dd; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
  };
  Sha256.prototype.update = function (data) {
    let i = 0;
    this.total += data.length;
    if (this.used) {
      i = Math.min(64 - this.used, data.length);
      this.buf.set(data.subarray(0, i), this.used);
      this.used += i;
      if (this.used < 64) return;
      this.block(this.buf, 0);
      this.used = 0;
    }
    for (; i + 64 <= data.length; i += 64) this.block(data, i);
    if (i < data.length) { this.buf.set(data.subarray(i), 0); this.used = data.length - i; }
  };
  Sha256.prototype.hex = function () {
    const bits = this.total * 8;
    const pad = new Uint8Array((this.used < 56 ? 56 : 120) - this.used + 8);
    pad[0] = 0x80;
    const hi = Math.floor(bits / 4294967296), lo = bits >>> 0, n = pad.length;
    for (let i = 0; i < 4; i++) { pad[n - 8 + i] = (hi >>> (24 - 8 * i)) & 255; pad[n - 4 + i] = (lo >>> (24 - 8 * i)) & 255; }
    this.update(pad);
    return Array.from(this.h, (x) => x.toString(16).padStart(8, "0")).join("");
  };
  window.ComputeMeshSha256 = Sha256;  // for the page test

  const SLICE = 4 * 1024 * 1024;
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  async function fileSha256(file, progress) {
    const sha = new Sha256();
    for (let at = 0; at < file.size; at += SLICE) {
      sha.update(new Uint8Array(await file.slice(at, at + SLICE).arrayBuffer()));
      progress(Math.min(at + SLICE, file.size), file.size);
    }
    return sha.hex();
  }

  function setup(form) {
    const input = form.querySelector('input[type="file"]');
    const bar = form.querySelector("[data-upload-bar]");
    const fill = bar && bar.querySelector("span");
    const status = form.querySelector("[data-upload-status]");
    const errorBox = form.querySelector("[data-upload-error]");
    const csrf = (form.querySelector('input[name="csrfmiddlewaretoken"]') || {}).value || "";
    const api = form.dataset.api || "/api/v1/uploads/";
    const chunk = Number(form.dataset.chunkBytes || 8 * 1024 * 1024);

    const show = (text, done, total) => {
      if (status) status.textContent = text;
      if (bar) { bar.hidden = false; bar.setAttribute("aria-valuenow", total ? Math.floor(100 * done / total) : 0); }
      if (fill) fill.style.width = (total ? (100 * done / total).toFixed(1) : 0) + "%";
    };
    const fail = (text) => { if (errorBox) { errorBox.textContent = text; errorBox.hidden = false; } };
    const call = async (method, url, body, headers) => {
      const response = await fetch(url, {method, body, credentials: "same-origin",
        headers: Object.assign({"X-CSRFToken": csrf, "Accept": "application/json"}, headers || {})});
      if (response.status >= 400) {
        let detail = "HTTP " + response.status;
        try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
        const error = new Error(detail);
        error.status = response.status;
        throw error;
      }
      return response;
    };
    const offsetOf = async (id) => Number((await call("HEAD", api + id + "/")).headers.get("Upload-Offset"));

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (errorBox) errorBox.hidden = true;
      const file = input && input.files && input.files[0];
      if (!file) { fail("Choose a file."); return; }
      const button = form.querySelector('button[type="submit"]');
      if (button) button.disabled = true;
      try {
        const sha256 = await fileSha256(file, (d, t) => show("Checking the file…", d, t));
        const open = await (await call("GET", api)).json();
        let upload = open.find((u) => u.purpose === form.dataset.purpose && u.name === file.name
                                      && u.size_bytes === file.size && u.sha256 === sha256);
        if (!upload) {
          const fields = {purpose: form.dataset.purpose, name: file.name, size_bytes: file.size, sha256};
          form.querySelectorAll("[data-upload-field]").forEach((el) => {
            if (!el.value) return;
            fields[el.name] = el.name === "params_schema" ? JSON.parse(el.value) : el.value;
          });
          upload = await (await call("POST", api, JSON.stringify(fields), {"Content-Type": "application/json"})).json();
        }
        let offset = upload.offset, breaks = 0;
        const size = Math.min(chunk, upload.chunk_max_bytes || chunk);
        show("Uploading…", offset, file.size);
        while (offset < file.size) {
          try {
            const response = await call("PATCH", api + upload.id + "/", file.slice(offset, offset + size),
              {"Content-Type": "application/offset+octet-stream", "Upload-Offset": String(offset)});
            offset = Number(response.headers.get("Upload-Offset"));
            breaks = 0;
          } catch (error) {
            if (error.status && error.status !== 409 && error.status < 500) throw error;
            if (++breaks > 20) throw error;
            show("Connection lost; resuming…", offset, file.size);
            await sleep(Math.min(10000, 500 * 2 ** breaks));
            offset = await offsetOf(upload.id);  // where the server stopped
          }
          show("Uploading…", offset, file.size);
        }
        show("Checking the SHA-256 on the server…", file.size, file.size);
        await call("POST", api + upload.id + "/finish/");
        show("Done.", file.size, file.size);
        window.location.reload();
      } catch (error) {
        fail(error.message || String(error));
      } finally {
        if (button) button.disabled = false;
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("form[data-resumable-upload]").forEach(setup);
  });
})();
