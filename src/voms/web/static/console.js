// OpenVoMS console: local times (UTC stays on hover), the dashboard's and the reports' charts.
// Everything works without this file; it only adds to the server-rendered pages.
(function () {
  "use strict";

  function localTimes(root) {
    var format = new Intl.DateTimeFormat(undefined, {
      year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"
    });
    root.querySelectorAll("time[datetime]").forEach(function (node) {
      if (node.dataset.local) { return; }
      var when = new Date(node.getAttribute("datetime"));
      if (!isNaN(when)) {
        node.textContent = format.format(when);
        node.dataset.local = "1";
      }
    });
  }

  var palette = ["#0b5cad", "#a4161a", "#2e7d32", "#8a5300", "#6a1b9a", "#00695c", "#37474f", "#c2185b"];

  function chart(canvasId, dataId) {
    var canvas = document.getElementById(canvasId);
    var source = document.getElementById(dataId);
    if (!canvas || !source || typeof Chart === "undefined") { return; }
    var spec = JSON.parse(source.textContent);
    var names = Object.keys(spec.series);
    var labels = spec.labels;
    if (spec.hours) {
      var hour = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
      labels = labels.map(function (iso) { return hour.format(new Date(iso)); });
    }
    new Chart(canvas, {
      type: spec.type,
      data: {
        labels: labels,
        datasets: names.map(function (name, i) {
          return {
            label: name, data: spec.series[name],
            backgroundColor: palette[i % palette.length], borderColor: palette[i % palette.length]
          };
        })
      },
      options: { responsive: true, maintainAspectRatio: false, animation: false,
        scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    chart("chart-states", "data-states");
    chart("chart-hours", "data-hours");
    chart("chart-report", "data-report");
  });
  document.addEventListener("htmx:afterSwap", function (event) { localTimes(event.target); });
})();
