// The course site's script, added to every page by book/_ext/course_site.py. Two jobs:
//
// 1. Scroll hints. A code block, table or diagram wider than the page scrolls sideways; its box
//    then gets the class course-overflows (a shadow on the side with more to see, drawn by
//    course.css), so a reader on a phone can tell that a line goes on.
// 2. Kernel-free explorers (toylib.present.explorer). A page without an explorer loads nothing more. On a page with one, Vega, Vega-Lite and
// vega-embed are loaded from the site's own copies (_static/vega/, written by
// scripts/vendor_assets.sh) and each explorer's embedded specification is drawn, with its
// controls. Pages that show widgets also load RequireJS, whose global `define` would make the
// Vega UMD builds register as AMD modules instead of globals: it is hidden while they load.
(function () {
  "use strict";
  var here = document.currentScript && document.currentScript.src;
  var base = here ? new URL("vega/", here).href : "_static/vega/";
  var FILES = ["vega.min.js", "vega-lite.min.js", "vega-embed.min.js"];

  function load(src) {
    return new Promise(function (resolve, reject) {
      var s = document.createElement("script");
      s.src = src;
      s.async = false;
      s.onload = resolve;
      s.onerror = function () { reject(new Error("could not load " + src)); };
      document.head.appendChild(s);
    });
  }

  var libs = null;
  function vegaLibs() {
    if (window.vegaEmbed) return Promise.resolve();
    if (libs) return libs;
    var amd = window.define;
    window.define = undefined;
    libs = FILES.reduce(function (p, f) { return p.then(function () { return load(base + f); }); },
                        Promise.resolve())
      .finally(function () { window.define = amd; });
    return libs;
  }

  function draw(box) {
    if (box.getAttribute("data-explorer-state")) return Promise.resolve();
    box.setAttribute("data-explorer-state", "loading");
    var script = box.querySelector('script[type="application/vnd.course-explorer+json"]');
    var target = box.querySelector(".course-explorer-chart");
    if (!script || !target) return Promise.resolve();
    var spec = JSON.parse(script.textContent);
    return vegaLibs()
      .then(function () {
        return window.vegaEmbed(target, spec, { mode: "vega-lite", actions: false, renderer: "svg" });
      })
      .then(function (result) {
        box.explorerView = result.view;
        box.setAttribute("data-explorer-state", "ready");
      })
      .catch(function (err) {
        box.setAttribute("data-explorer-state", "failed");
        target.textContent = "The chart could not be drawn (" + err.message +
          "); the measured values are in the table below.";
        console.error("explorer:", err);
      });
  }

  function drawAll() {
    var boxes = document.querySelectorAll(".course-explorer");
    return Promise.all(Array.prototype.map.call(boxes, draw));
  }

  // -- scroll hints -------------------------------------------------------------------------
  var SCROLLERS = ".bd-article div.highlight > pre, .bd-article .cell_output .output.text_html, " +
                  ".bd-article .table-wrapper, .bd-article pre.mermaid, .course-scroll";

  function hint(el) {
    var box = el.parentElement;
    if (!box) return;
    var more = el.scrollWidth - el.clientWidth > 2;
    box.classList.toggle("course-overflows", more);
    box.classList.toggle("course-overflows-left", more && el.scrollLeft > 2);
    box.classList.toggle("course-overflows-right",
                         more && el.scrollLeft + el.clientWidth < el.scrollWidth - 2);
  }

  // A box's width changes as the sidebars open and close and as fonts load: look again then.
  var resized = window.ResizeObserver ? new ResizeObserver(function (entries) {
    entries.forEach(function (entry) { hint(entry.target); });
  }) : null;

  function hints() {
    document.querySelectorAll(SCROLLERS).forEach(function (el) {
      if (!el.hasAttribute("data-course-scroll")) {
        el.setAttribute("data-course-scroll", "");
        el.addEventListener("scroll", function () { hint(el); }, { passive: true });
        if (resized) resized.observe(el);
      }
      hint(el);
    });
  }

  function start() {
    hints();
    drawAll().then(hints);
    window.addEventListener("resize", hints);
    window.addEventListener("load", hints);
    // Diagrams and widgets are drawn after load: look again when the article changes.
    var article = document.querySelector(".bd-article") || document.body;
    var pending = null;
    new MutationObserver(function () {
      if (pending) return;
      pending = setTimeout(function () { pending = null; hints(); }, 150);
    }).observe(article, { childList: true, subtree: true });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
