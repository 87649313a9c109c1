// quorumq console: refreshes the live part of the page and draws the rate
// charts. Everything works without it, only not live.
(function () {
  "use strict";
  var every = parseInt(document.body.dataset.refreshMs, 10); // unset: a page that is not live
  var history = {}; // queue -> series -> {last: [t, total], points: [rate...]}
  var keep = 30; // samples per chart: 90 s at the default refresh

  function sample() {
    document.querySelectorAll("tr[data-queue]").forEach(function (tr) {
      var q = tr.dataset.queue, t = +tr.dataset.t;
      var h = history[q] || (history[q] = {});
      ["enq", "ack"].forEach(function (s) {
        var total = +tr.dataset[s], e = h[s] || (h[s] = {last: null, points: []});
        if (e.last && t > e.last[0]) {
          e.points.push(Math.max(0, (total - e.last[1]) * 1000 / (t - e.last[0])));
          if (e.points.length > keep) e.points.shift();
        }
        if (!e.last || t > e.last[0]) e.last = [t, total];
      });
    });
  }

  function draw() {
    document.querySelectorAll("tr[data-queue] .spark").forEach(function (el) {
      var e = (history[el.closest("tr").dataset.queue] || {})[el.dataset.series];
      var pts = e ? e.points : [];
      var max = Math.max.apply(null, pts.concat([1]));
      var w = 100, hgt = 24, step = w / keep;
      var bars = pts.map(function (v, i) {
        var bh = v > 0 ? Math.max(1, v / max * (hgt - 2)) : 0;
        return '<rect x="' + (w - (pts.length - i) * step).toFixed(1) + '" y="' + (hgt - bh).toFixed(1) +
          '" width="' + (step - 0.6).toFixed(1) + '" height="' + bh.toFixed(1) + '"/>';
      }).join("");
      var last = pts.length ? pts[pts.length - 1] : null;
      el.innerHTML = '<svg viewBox="0 0 ' + w + " " + hgt + '" aria-hidden="true"><rect class="bg" width="' + w + '" height="' + hgt + '"/>' + bars + "</svg>" +
        '<span class="v">' + (last === null ? "…" : (last < 10 ? last.toFixed(1) : Math.round(last))) + "/s</span>";
    });
  }

  function busy() {
    var a = document.activeElement;
    return a && (a.tagName === "INPUT" || a.tagName === "SELECT" || a.tagName === "TEXTAREA") ||
      (window.getSelection && String(window.getSelection()) !== "");
  }

  var status = document.getElementById("refresh-status");
  function refresh() {
    if (document.hidden || busy()) return schedule();
    fetch(location.href, {credentials: "same-origin", cache: "no-store"}).then(function (r) {
      if (r.redirected && /\/login$/.test(new URL(r.url).pathname)) { location.href = r.url; return; }
      return r.text().then(function (html) {
        var next = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        if (!next) throw new Error("unexpected answer " + r.status);
        // Keep open what the reader opened.
        var open = Array.prototype.map.call(document.querySelectorAll("#live details[open] summary"), function (s) { return s.textContent; });
        next.querySelectorAll("details").forEach(function (d) {
          var s = d.querySelector("summary");
          if (s && open.indexOf(s.textContent) >= 0) d.open = true;
        });
        document.getElementById("live").replaceWith(next);
        status.textContent = r.ok ? "" : "last refresh: HTTP " + r.status;
        sample(); draw();
      });
    }).catch(function (err) {
      status.textContent = "refresh failed (" + err.message + "), retrying";
    }).then(schedule);
  }
  function schedule() { setTimeout(refresh, every); }

  sample(); draw();
  if (every > 0) schedule();
})();
