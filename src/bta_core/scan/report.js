(function(){
  // click a match figure: show it at full size; click again or press Escape to close
  var box = document.createElement('div'); box.id = 'zoom';
  var big = document.createElement('img'); box.appendChild(big); document.body.appendChild(box);
  function close(){ box.classList.remove('open'); }
  document.querySelectorAll('img.zoom').forEach(function(img){
    img.addEventListener('click', function(){ big.src = img.src; box.classList.add('open'); });
  });
  box.addEventListener('click', close);
  document.addEventListener('keydown', function(e){ if (e.key === 'Escape') close(); });
  // verdict filters
  document.querySelectorAll('.filters input').forEach(function(cb){
    cb.addEventListener('change', function(){
      document.body.classList.toggle('hide-' + cb.dataset.verdict, !cb.checked);
    });
  });
})();
