// The console's only script: a readout of the heatmap cell under the pointer. Every page
// works without it (each cell also carries an SVG <title>).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var heatmap = document.getElementById("heatmap");
  var readout = document.getElementById("heatmap-readout");
  if (!heatmap || !readout) return;
  heatmap.addEventListener("mouseover", function (event) {
    var cell = event.target.closest("rect.cell");
    if (!cell) return;
    readout.textContent = "true " + cell.dataset.true + " \u2192 predicted " + cell.dataset.predicted +
      ": " + cell.dataset.count;
  });
  heatmap.addEventListener("mouseleave", function () { readout.textContent = "\u00a0"; });
});
