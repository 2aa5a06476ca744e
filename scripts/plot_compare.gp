# Learning curves of examples/compare: held-out greedy accuracy vs fine-tuning step, one line per
# objective at its validation-selected learning rate (means over seeds).
# Usage: gnuplot -e "datafile='compare_out/curves.dat'; outfile='compare_out/accuracy.png'" scripts/plot_compare.gp
if (!exists("datafile")) datafile = 'compare_out/curves.dat'
if (!exists("outfile")) outfile = 'compare_out/accuracy.png'
# Space-separated legend titles, one per column after the step; compare passes "NAME (lr)".
if (!exists("titles")) titles = 'SFT DFT DFT2 DPO IPO SimPO ORPO RWR BoN-SFT RLOO'
set terminal pngcairo size 900,540 font ",11" noenhanced
set output outfile
set grid
set key outside right
set xlabel "fine-tuning step"
set ylabel "test accuracy (greedy exact match)"
set title "Held-out accuracy by objective (mean over seeds, selected lr)"
ncol = words(titles) / 2
plot for [i=1:ncol] datafile using 1:(column(i+1)) with linespoints lw 2 title word(titles, 2*i-1).' '.word(titles, 2*i)
