# Learning curves of examples/compare: held-out greedy accuracy vs fine-tuning step, one line per
# objective at its validation-selected learning rate (means over seeds). curves.dat's header line
# names the columns "METHOD(lr)"; they become the legend.
# Usage: gnuplot -e "datafile='compare_out/curves.dat'; outfile='compare_out/accuracy.png'" scripts/plot_compare.gp
if (!exists("datafile")) datafile = 'compare_out/curves.dat'
if (!exists("outfile")) outfile = 'compare_out/accuracy.png'
set terminal pngcairo size 900,540 font ",11" noenhanced
set output outfile
set grid
set yrange [0:*]
set key outside right
set xlabel "fine-tuning step"
set ylabel "test accuracy (greedy exact match)"
set title "Held-out accuracy by objective (mean over seeds, selected lr)"
colors = "#1f77b4 #ff7f0e #2ca02c #d62728 #9467bd #8c564b #e377c2 #7f7f7f #bcbd22 #17becf #000000 #aaaa00"
plot for [i=2:*] datafile using 1:i with linespoints lw 2 pt (i - 1) lc rgb word(colors, (i - 2) % 12 + 1) title columnhead(i)
